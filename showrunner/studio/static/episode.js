// One episode's live view: its status, progress and cost, the stages table, the timeline,
// Cancel, and once it has ended its files (files.js). While it runs its events come by an
// EventSource (the URL carries the episode's token), resumed after a lost connection, and the
// status is read again as they come; a run's folder, read-only, opens without them.

import { api, apiUrl, episodePath, EpisodeToken, FINISHED, lostKey, session } from "./api.js";
import { $, announce, costOf, element, money, paragraph, reportError } from "./dom.js";
import { focusRow, LIST_REFRESH_MS, loadList, markOpen, updateListed } from "./episodes.js";
import { showFiles, stopFiles } from "./files.js";
import { drawStages } from "./stages.js";

const REREAD_MS = 1000; // an episode's status re-read at most this often while events arrive
const TIMELINE_REFRESH_MS = 4000;
const RECONNECT_MS = 2000;
const MAX_RECONNECTS = 5; // failed connections in a row before the live view gives up
const NODE_EVENTS = {
  node_started: "running", node_retrying: "retrying", node_finished: "done",
  node_failed: "failed",
};

let open = null; // the open episode's Watch

export function openEpisode(id, { focus = true } = {}) {
  if (open && open.id === id) {
    if (focus) $("episode-view").focus();
    return;
  }
  closeEpisode({ restoreFocus: false });
  history.replaceState(null, "", `#episode/${encodeURIComponent(id)}`);
  open = new Watch(id);
  markOpen(id);
  const view = $("episode-view");
  view.hidden = false;
  if (focus) view.focus();
  open.start().catch(reportError);
}

export function closeEpisode({ restoreFocus = true } = {}) {
  const watch = open;
  if (!watch) return;
  watch.stop();
  open = null;
  $("episode-view").hidden = true;
  if (location.hash.startsWith("#episode/")) {
    history.replaceState(null, "", location.pathname + location.search);
  }
  markOpen(null);
  if (restoreFocus) focusRow(watch.id);
}

export async function cancelEpisode() {
  const watch = open;
  if (!watch) return;
  const button = $("cancel");
  button.disabled = true;
  try {
    await api(episodePath(watch.id), { method: "DELETE" });
    announce("Cancelling the episode.");
    await watch.reread();
    if (watch.finished) await watch.finish();
    loadList();
  } catch (err) {
    if (!lostKey(err)) $("episode-error").textContent = `Not cancelled: ${err.message}.`;
  } finally {
    button.disabled = false;
  }
}

// What one open episode shows, and the live connections that keep it so.
class Watch {
  constructor(id) {
    this.id = id;
    this.view = null; // GET /v1/episodes/{id}
    this.nodes = new Map(); // node id text -> done | running | retrying | failed
    this.percent = 0;
    this.lastSeq = 0;
    this.stopped = false;
    this.source = null; // the EventSource, while the episode runs
    this.failures = 0;
    this.token = new EpisodeToken(id); // for the events' and the files' URLs
    this.rereadTimer = null;
    this.lastReread = 0;
    this.timelineTimer = null;
    this.reconnectTimer = null;
    this.linksTimer = null; // the files' links made anew (files.js)
    this.finishedOnce = false;
    this.drawPending = false;
    resetEpisodeView(id);
  }

  async start() {
    if (!(await this.reread())) return;
    // A read-only server (a run's folder) has nothing going on, whatever its report says.
    if (this.finished || session.who.read_only) {
      await this.finish();
      return;
    }
    await this.connect();
    this.later(() => this.drawTimeline());
    this.timelineTimer = setInterval(() => this.later(() => this.drawTimeline()),
      TIMELINE_REFRESH_MS);
  }

  stop() {
    this.stopped = true;
    if (this.source) this.source.close();
    this.source = null;
    clearTimeout(this.rereadTimer);
    clearTimeout(this.reconnectTimer);
    clearInterval(this.timelineTimer);
    stopFiles(this);
  }

  get finished() {
    return Boolean(this.view) && FINISHED.has(this.view.status);
  }

  // -- the episode's status ---------------------------------------------------------------

  async reread() {
    this.lastReread = Date.now();
    let view;
    try {
      view = await api(episodePath(this.id));
    } catch (err) {
      if (this.stopped || lostKey(err)) return false;
      $("episode-error").textContent = `This episode could not be read: ${err.message}.`;
      return false;
    }
    if (this.stopped) return false;
    $("episode-error").textContent = "";
    const before = this.view ? this.view.status : null;
    this.view = view;
    if (typeof view.percent === "number") this.percent = Math.max(this.percent, view.percent);
    if (view.status === "completed") this.percent = 100;
    this.render();
    // Its row, if listed, says a new status; else this view does.
    if (!updateListed(this.id, view) && before && before !== view.status) {
      announce(`This episode is now ${view.status}.`);
    }
    return true;
  }

  // Re-read at most once a second while events come: the cost and the files follow them.
  rereadSoon() {
    if (this.rereadTimer) return;
    const wait = Math.max(0, REREAD_MS - (Date.now() - this.lastReread));
    this.rereadTimer = setTimeout(() => this.later(async () => {
      await this.reread();
      this.rereadTimer = null;
      if (this.finished) await this.finish();
    }), wait);
  }

  render() {
    const view = this.view;
    const section = $("episode-view");
    section.dataset.status = view.status;
    section.dataset.episodeId = this.id;
    $("episode-title").textContent = view.title || `Episode ${this.id}`;
    const percent = Math.floor(this.percent);
    const cost = money(costOf(view));
    const spent = this.finished ? cost : `${cost} so far`;
    $("episode-status").replaceChildren(
      element("span", { className: `badge status-${view.status}`, textContent: view.status }),
      document.createTextNode(` ${percent}% · ${spent} · episode ${this.id}`));
    $("episode-progress").value = percent;
    const error = view.error ? [paragraph(`Error: ${view.error}`)] : [];
    for (const missing of view.missing || []) {
      error.push(paragraph(`Missing ${missing.what}: ${missing.why}`));
    }
    $("episode-error").replaceChildren(...error);
    $("cancel").hidden = this.finished || Boolean(session.who && session.who.read_only);
    drawStages(this);
  }

  // Events come in bursts (a whole history on connecting): drawn once a frame.
  renderSoon() {
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      if (!this.stopped && this.view) this.render();
    });
  }

  // -- events -------------------------------------------------------------------------------

  async connect() {
    if (this.stopped || this.finished) return;
    let tokenQuery;
    try {
      tokenQuery = await this.token.query();
    } catch (err) {
      if (!lostKey(err)) this.connectionFailed(err.message);
      return;
    }
    if (this.stopped) return;
    const query = new URLSearchParams(tokenQuery);
    if (this.lastSeq) query.set("after", String(this.lastSeq));
    const search = query.toString();
    const url = apiUrl(`${episodePath(this.id)}/events${search ? `?${search}` : ""}`);
    const source = new EventSource(url);
    this.source = source;
    const kinds = ["queued", "started", ...Object.keys(NODE_EVENTS), ...FINISHED];
    for (const kind of kinds) {
      source.addEventListener(kind, (message) => this.onEvent(kind, message));
    }
    source.addEventListener("interrupted", (message) => {
      const data = parseEvent(message);
      $("episode-error").textContent = `The live view was interrupted: ${
        (data && data.message) || "the server ended it"}. Reconnecting.`;
    });
    source.addEventListener("open", () => {
      this.failures = 0;
    });
    source.addEventListener("error", () => this.onStreamError(source));
  }

  onEvent(kind, message) {
    const data = parseEvent(message);
    if (!data || this.stopped) return;
    this.failures = 0;
    if (typeof data.seq === "number") this.lastSeq = Math.max(this.lastSeq, data.seq);
    if (typeof data.percent === "number") this.percent = Math.max(this.percent, data.percent);
    if (data.node && NODE_EVENTS[kind]) this.nodes.set(data.node, NODE_EVENTS[kind]);
    if (FINISHED.has(kind)) { // an episode's last event is named after how it ended
      if (this.source) this.source.close();
      this.source = null;
      clearTimeout(this.rereadTimer);
      this.rereadTimer = null;
      this.reread().then((ok) => (ok ? this.finish() : null)).catch(reportError);
      return;
    }
    if (this.view) this.renderSoon();
    this.rereadSoon();
  }

  onStreamError(source) {
    if (this.stopped || source !== this.source) return;
    // The stream ends when the episode does; EventSource would then connect again and again.
    // A stream refused (a token run out, the server restarting) is closed: made anew here.
    if (source.readyState === EventSource.CLOSED) {
      this.source = null;
      this.connectionFailed("the live view lost its connection");
      return;
    }
    this.rereadSoon();
  }

  connectionFailed(why) {
    this.failures += 1;
    this.token.forget(); // perhaps it ran out
    if (this.failures > MAX_RECONNECTS) {
      $("episode-error").textContent = `${why}; the status is still re-read.`;
      this.rereadTimer = null;
      this.pollUntilFinished();
      return;
    }
    this.reconnectTimer = setTimeout(() => this.later(async () => {
      if (!(await this.reread())) return;
      if (this.finished) await this.finish();
      else await this.connect();
    }), RECONNECT_MS);
  }

  pollUntilFinished() {
    this.reconnectTimer = setTimeout(() => this.later(async () => {
      if (!(await this.reread())) return;
      if (this.finished) await this.finish();
      else this.pollUntilFinished();
    }), LIST_REFRESH_MS);
  }

  // A timer's work: nothing once the view is closed, and no failure left unhandled.
  later(work) {
    if (!this.stopped) work().catch(reportError);
  }

  // -- the end ------------------------------------------------------------------------------

  async finish() {
    if (this.finishedOnce || this.stopped) return;
    this.finishedOnce = true;
    clearInterval(this.timelineTimer);
    if (this.source) this.source.close();
    this.source = null;
    this.render();
    await Promise.all([showFiles(this), this.drawTimeline()]);
    // All shown (files, screenplay, timeline): a mark for whoever waits for it, tests too.
    if (!this.stopped) $("episode-view").dataset.shown = "all";
  }

  // -- the timeline -------------------------------------------------------------------------

  async drawTimeline() {
    const box = $("timeline");
    let module;
    try {
      module = await timelineModule();
    } catch {
      box.replaceChildren(paragraph("Timeline unavailable: its drawing could not be loaded."));
      return;
    }
    let data;
    try {
      data = await api(`${episodePath(this.id)}/timeline`);
    } catch (err) {
      if (this.stopped || lostKey(err)) return;
      box.replaceChildren(paragraph(`Timeline unavailable: ${err.message}.`));
      return;
    }
    if (this.stopped) return;
    // A finished episode opens without its events: its nodes come from the timeline's bars.
    if (!this.source) {
      for (const bar of data.bars || []) {
        if (!this.nodes.has(bar.node) || this.finished) this.nodes.set(bar.node, bar.status);
      }
      this.renderSoon();
    }
    const canvas = element("div", { className: "timeline-drawing" });
    box.replaceChildren(canvas);
    try {
      module.drawTimeline(canvas, data);
    } catch (err) {
      box.replaceChildren(paragraph(`Timeline unavailable: ${err.message}.`));
    }
  }
}

let timelineImport = null;

// Loaded when first needed, so that the page works without it.
function timelineModule() {
  if (!timelineImport) timelineImport = import("./timeline.js");
  return timelineImport;
}

function parseEvent(message) {
  try {
    return JSON.parse(message.data);
  } catch {
    return null;
  }
}

function resetEpisodeView(id) {
  const section = $("episode-view");
  section.dataset.status = "";
  section.dataset.episodeId = id;
  delete section.dataset.shown;
  $("episode-title").textContent = `Episode ${id}`;
  $("episode-status").textContent = "Loading…";
  $("episode-progress").value = 0;
  $("episode-error").replaceChildren();
  $("cancel").hidden = true;
  $("player-box").hidden = true;
  $("downloads-box").hidden = true;
  $("downloads").replaceChildren();
  $("screenplay-box").hidden = true;
  $("screenplay").replaceChildren();
  $("timeline").replaceChildren(paragraph("Loading the timeline…"));
  $("stages").tHead.replaceChildren();
  $("stages").tBodies[0].replaceChildren();
}
