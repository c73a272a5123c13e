// The Showrunner studio: sign in, submit premises, follow episodes live, watch what they made.
//
// One ES module, no framework, no build step, nothing fetched from elsewhere. Every text that
// comes from the server (titles, errors, the screenplay) is put in with textContent or DOM
// nodes, never as HTML. URLs are relative to the page, so it works under a route prefix too.

const KEY_STORAGE = "showrunner.apiKey";
const LIST_REFRESH_MS = 2000; // while an episode is queued or running
const LIST_PAGES = 5; // pages of the list followed at most
const LIST_PAGE_SIZE = 100;
const REREAD_MS = 1000; // an episode's status re-read at most this often while events arrive
const TIMELINE_REFRESH_MS = 4000;
const RECONNECT_MS = 2000;
const MAX_RECONNECTS = 5; // failed connections in a row before the live view gives up
const TOKEN_MARGIN_MS = 60_000; // a token this close to its end is replaced before use

const FINISHED = new Set(["completed", "failed", "cancelled"]);
const STAGES = ["outline", "content", "dialogue", "speech", "image", "clip", "compose",
  "stitch"];
const EPISODE_STAGES = new Set(["outline", "stitch"]); // nodes of no scene
const NODE_EVENTS = {
  node_started: "running", node_retrying: "retrying", node_finished: "done",
  node_failed: "failed",
};
const ENDING_EVENTS = new Set(["completed", "failed", "cancelled"]);
const ARTIFACT_LABELS = {
  "episode.mp4": "Video", "poster.png": "Poster", "episode.srt": "Subtitles",
  "script.md": "Screenplay (Markdown)", "script.json": "Script (JSON)",
};
const SUBMIT_FIELDS = ["scenes", "lines_per_scene", "style", "priority", "budget_usd", "seed",
  "on_scene_failure", "tier", "media", "cache"];

const $ = (id) => document.getElementById(id);

const state = {
  key: null, // the API key in use; null on a keyless server
  who: null, // GET /v1/whoami
  fields: {}, // EpisodeRequest's fields: defaults and limits, from the page's data block
  rows: new Map(), // episode id -> its <li>
  statuses: new Map(), // episode id -> last status seen, to announce changes
  listTimer: null,
  listRound: 0, // answers of an older listing are dropped
  watch: null, // the open episode's Watch
};

// -- talking to the API --------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, fields = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

function apiUrl(path) {
  return new URL(path, document.baseURI);
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "network", `the server could not be reached (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `${response.status} ${response.statusText}`, error.fields || []);
  }
  return data;
}

const episodePath = (id) => `v1/episodes/${encodeURIComponent(id)}`;

// A failure of a key that worked: it was revoked, or the server restarted with other keys.
function lostKey(err) {
  if (err instanceof ApiError && err.status === 401) {
    showSignin(err.message);
    return true;
  }
  return false;
}

// -- signing in ----------------------------------------------------------------------------

async function start(key) {
  state.key = key || null;
  let who;
  try {
    who = await api("v1/whoami");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      if (key) sessionStorage.removeItem(KEY_STORAGE);
      state.key = null;
      // No key tried: the server wants one, which is no error. A key tried: it was refused.
      showSignin(key ? err.message : null);
      return;
    }
    $("loading").textContent = `The studio could not start: ${err.message}.`;
    $("loading").hidden = false;
    return;
  }
  if (state.key) sessionStorage.setItem(KEY_STORAGE, state.key);
  showApp(who);
}

function showSignin(serverMessage) {
  stopEverything();
  state.key = null;
  state.who = null;
  $("loading").hidden = true;
  $("app").hidden = true;
  $("signout").hidden = true;
  $("dashboard-link").hidden = true;
  $("who").textContent = "";
  $("signin-section").hidden = false;
  const error = $("signin-error");
  if (serverMessage) {
    error.replaceChildren(
      paragraph("This API key was not accepted: check it and sign in again."),
      paragraph(`The server said: ${serverMessage}`));
    $("key").setAttribute("aria-invalid", "true");
    $("key").focus();
  } else {
    error.replaceChildren();
    $("key").removeAttribute("aria-invalid");
  }
}

function showApp(who) {
  state.who = who;
  $("loading").hidden = true;
  $("signin-section").hidden = true;
  $("signin-error").replaceChildren();
  $("key").value = "";
  $("app").hidden = false;
  $("signout").hidden = !state.key;
  let whoText = state.key ? `Signed in as ${who.tenant}.` : "No API key needed: this server "
    + "serves this machine's own clients.";
  if (who.read_only) whoText = "Read-only: a finished run, opened from its folder.";
  $("who").textContent = whoText;
  const dashboard = $("dashboard-link");
  dashboard.hidden = !who.dashboard_url;
  if (who.dashboard_url) dashboard.href = who.dashboard_url;
  $("submit-section").hidden = Boolean(who.read_only);
  const limits = who.limits || {};
  $("submit-limits").textContent = limits.max_batch
    ? `Up to ${limits.max_batch} premises at once, ${limits.max_scenes_per_request} scenes `
      + "in all." : "";
  loadList();
  const wanted = /^#episode\/(.+)$/.exec(location.hash);
  if (wanted) openEpisode(decodeURIComponent(wanted[1]), { focus: false });
}

function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  stopEverything();
  state.key = null;
  $("episodes").replaceChildren();
  state.rows.clear();
  state.statuses.clear();
  history.replaceState(null, "", location.pathname + location.search);
  // A keyless server serves this machine without a key: then the page stays usable.
  start(null).catch(reportError);
}

function stopEverything() {
  clearTimeout(state.listTimer);
  state.listRound += 1;
  closeEpisode({ restoreFocus: false });
}

// -- submitting ----------------------------------------------------------------------------

// EpisodeRequest's defaults and limits, put in the page by the server (`page_html`).
function readFields() {
  const block = $("request-fields");
  try {
    return block ? JSON.parse(block.textContent) : {};
  } catch {
    return {};
  }
}

function applyFields() {
  const fields = state.fields;
  for (const name of [...SUBMIT_FIELDS, "continuity_k"]) {
    const input = $(name);
    const field = fields[name];
    if (!input || !field) continue;
    if (input.type === "checkbox") {
      input.checked = Boolean(field.default);
      continue;
    }
    if (field.minimum !== undefined) input.min = field.minimum;
    if (field.exclusiveMinimum !== undefined) input.min = field.exclusiveMinimum;
    if (field.maximum !== undefined) input.max = field.maximum;
    if (field.maxLength !== undefined) input.maxLength = field.maxLength;
    if (field.default !== undefined && field.default !== null) input.value = field.default;
  }
  const continuity = fields.continuity && fields.continuity.default;
  if (continuity) setContinuity(continuity);
}

function setContinuity(text) {
  const [mode, k] = text.split(":");
  $("continuity_mode").value = mode;
  if (k) $("continuity_k").value = k;
  $("continuity_k-field").hidden = !k;
}

function continuityValue() {
  const mode = $("continuity_mode").value;
  return mode === "window" || mode === "batch" ? `${mode}:${$("continuity_k").value}` : mode;
}

// What the form asks beyond the premise: only the fields set to something else than the
// model's default, so the server's own defaults (and settings) apply to the rest.
function requestOptions() {
  const options = {};
  for (const name of SUBMIT_FIELDS) {
    const input = $(name);
    const field = state.fields[name] || {};
    let value;
    if (input.type === "checkbox") {
      value = input.checked;
    } else if (input.value.trim() === "") {
      continue;
    } else if (input.type === "number") {
      value = Number(input.value);
    } else {
      value = input.value.trim();
    }
    if (value !== field.default) options[name] = value;
  }
  const continuity = continuityValue();
  if (continuity !== (state.fields.continuity || {}).default) options.continuity = continuity;
  return options;
}

function clearSubmitErrors() {
  for (const element of document.querySelectorAll("#submit-form .field-error")) {
    element.textContent = "";
  }
  for (const element of document.querySelectorAll("#submit-form [aria-invalid]")) {
    element.removeAttribute("aria-invalid");
  }
  $("submit-error").replaceChildren();
}

// 422 field errors ("episodes.1.scenes") beside their inputs; others above the button.
function showFieldErrors(fields, premiseCount) {
  const shown = new Map(); // input -> messages
  const elsewhere = [];
  for (const { field, message } of fields) {
    const parts = String(field).split(".");
    let name = parts[0] === "episodes" && parts.length > 2 ? parts[2] : parts[0];
    const number = parts[0] === "episodes" && parts.length > 2 ? Number(parts[1]) + 1 : null;
    if (name === "premise" || (name === "episodes" && parts.length === 1)) name = "premises";
    const box = $(`${name}-error`);
    const text = name === "premises" && number !== null && premiseCount > 1
      ? `Premise ${number}: ${message}` : message;
    if (!box) {
      elsewhere.push(`${field}: ${message}`);
      continue;
    }
    const list = shown.get(name) || [];
    if (!list.includes(text)) list.push(text);
    shown.set(name, list);
  }
  for (const [name, messages] of shown) {
    $(`${name}-error`).textContent = messages.join(" ");
    const input = name === "continuity" ? $("continuity_mode") : $(name);
    if (input) input.setAttribute("aria-invalid", "true");
  }
  if (shown.has("style") || shown.has("tier") || shown.has("priority") || shown.has("seed")
      || shown.has("budget_usd") || shown.has("on_scene_failure") || shown.has("cache")) {
    document.querySelector("#submit-form details").open = true;
  }
  const summary = [paragraph("The episodes were not queued: correct the fields marked.")];
  for (const text of elsewhere) summary.push(paragraph(text));
  $("submit-error").replaceChildren(...summary);
}

async function submitEpisodes(event) {
  event.preventDefault();
  clearSubmitErrors();
  $("submit-done").textContent = "";
  const premises = $("premises").value.split("\n").map((line) => line.trim())
    .filter((line) => line);
  if (!premises.length) {
    $("premises-error").textContent = "Write a premise: one a line, one episode each.";
    $("premises").setAttribute("aria-invalid", "true");
    $("premises").focus();
    return;
  }
  const options = requestOptions();
  const button = $("submit-button");
  button.disabled = true;
  try {
    const answer = await api("v1/episodes", {
      method: "POST", body: { episodes: premises.map((premise) => ({ ...options, premise })) },
    });
    const count = answer.episodes.length;
    $("premises").value = "";
    $("submit-done").textContent = `Queued ${count} episode${count === 1 ? "" : "s"}.`;
    loadList();
  } catch (err) {
    if (lostKey(err)) return;
    if (err instanceof ApiError && err.fields.length) {
      showFieldErrors(err.fields, premises.length);
    } else {
      $("submit-error").replaceChildren(paragraph(`The episodes were not queued: ${err.message}`));
    }
  } finally {
    button.disabled = false;
  }
}

// -- the list of episodes ------------------------------------------------------------------

function loadList() {
  listEpisodes().catch(reportError);
}

async function listEpisodes() {
  clearTimeout(state.listTimer);
  const round = ++state.listRound;
  const episodes = [];
  try {
    let cursor = null;
    for (let page = 0; page < LIST_PAGES; page += 1) {
      const query = new URLSearchParams({ limit: String(LIST_PAGE_SIZE) });
      if (cursor) query.set("cursor", cursor);
      const data = await api(`v1/episodes?${query}`);
      episodes.push(...data.episodes);
      cursor = data.next_cursor;
      if (!cursor) break;
    }
  } catch (err) {
    if (round !== state.listRound || lostKey(err)) return;
    $("list-error").textContent = `The episodes could not be listed: ${err.message}. `
      + "Trying again.";
    state.listTimer = setTimeout(loadList, LIST_REFRESH_MS * 2);
    return;
  }
  if (round !== state.listRound) return;
  $("list-error").textContent = "";
  episodes.reverse(); // the newest first
  renderList(episodes);
  if (episodes.some((e) => !FINISHED.has(e.status))) {
    state.listTimer = setTimeout(loadList, LIST_REFRESH_MS);
  }
}

function renderList(episodes) {
  const list = $("episodes");
  const seen = new Set();
  episodes.forEach((episode, at) => {
    seen.add(episode.id);
    let row = state.rows.get(episode.id);
    if (!row) {
      row = newRow(episode.id);
      state.rows.set(episode.id, row);
    }
    updateRow(row, episode);
    // Moved only when out of place: moving a row would take the keyboard focus off it.
    if (list.children[at] !== row) list.insertBefore(row, list.children[at] || null);
  });
  for (const [id, row] of state.rows) {
    if (!seen.has(id)) {
      row.remove();
      state.rows.delete(id);
    }
  }
  $("list-empty").hidden = episodes.length > 0;
  const open = state.watch;
  for (const [id, row] of state.rows) {
    const button = row.querySelector("button");
    if (open && open.id === id) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

function newRow(id) {
  const row = element("li", { className: "episode-row" });
  row.dataset.episodeId = id;
  const button = element("button", { type: "button", className: "episode-open" });
  button.append(element("span", { className: "episode-title" }),
    element("span", { className: "episode-id", textContent: id }));
  button.addEventListener("click", () => openEpisode(id));
  row.append(button, element("span", { className: "badge" }),
    element("span", { className: "percent" }), element("span", { className: "cost" }));
  return row;
}

function updateRow(row, episode) {
  row.dataset.status = episode.status;
  row.querySelector(".episode-title").textContent = episode.title || "Untitled";
  const badge = row.querySelector(".badge");
  badge.textContent = episode.status;
  badge.className = `badge status-${episode.status}`;
  row.querySelector(".percent").textContent = `${Math.floor(episode.percent || 0)}%`;
  row.querySelector(".cost").textContent = money(costOf(episode));
  const before = state.statuses.get(episode.id);
  if (before && before !== episode.status) {
    announce(`${episode.title || episode.id}: ${episode.status}.`);
  }
  state.statuses.set(episode.id, episode.status);
}

// -- one episode ---------------------------------------------------------------------------

function openEpisode(id, { focus = true } = {}) {
  if (state.watch && state.watch.id === id) {
    if (focus) $("episode-view").focus();
    return;
  }
  closeEpisode({ restoreFocus: false });
  history.replaceState(null, "", `#episode/${encodeURIComponent(id)}`);
  state.watch = new Watch(id);
  for (const [rowId, row] of state.rows) {
    const button = row.querySelector("button");
    if (rowId === id) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
  const view = $("episode-view");
  view.hidden = false;
  if (focus) view.focus();
  state.watch.start().catch(reportError);
}

function closeEpisode({ restoreFocus = true } = {}) {
  const watch = state.watch;
  if (!watch) return;
  watch.stop();
  state.watch = null;
  $("episode-view").hidden = true;
  if (location.hash.startsWith("#episode/")) {
    history.replaceState(null, "", location.pathname + location.search);
  }
  const row = state.rows.get(watch.id);
  if (row) {
    row.querySelector("button").removeAttribute("aria-current");
    if (restoreFocus) row.querySelector("button").focus();
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
    this.token = null;
    this.tokenEnds = 0;
    this.tokenAsked = null; // the token request under way
    this.rereadTimer = null;
    this.lastReread = 0;
    this.timelineTimer = null;
    this.reconnectTimer = null;
    this.linksTimer = null;
    this.finishedOnce = false;
    this.drawPending = false;
    resetEpisodeView(id);
  }

  async start() {
    if (!(await this.reread())) return;
    // A read-only server (a run's folder) has nothing going on, whatever its report says.
    if (this.finished || state.who.read_only) {
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
    clearTimeout(this.linksTimer);
    const player = $("player");
    player.pause();
    player.removeAttribute("src");
    player.removeAttribute("poster");
    player.load();
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
    const row = state.rows.get(this.id);
    if (row) updateRow(row, view); // which says a new status
    else if (before && before !== view.status) announce(`This episode is now ${view.status}.`);
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
    $("cancel").hidden = this.finished || Boolean(state.who && state.who.read_only);
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
      tokenQuery = await this.tokenQuery();
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
    const kinds = ["queued", "started", ...Object.keys(NODE_EVENTS), ...ENDING_EVENTS];
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
    if (ENDING_EVENTS.has(kind)) {
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
    this.token = null; // perhaps it ran out
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

  // `?token=` for the URLs the browser fetches itself, which cannot carry the key; none
  // on a server without keys.
  async tokenQuery() {
    if (!state.key || (state.who && state.who.keyless)) return "";
    if (!this.token || Date.now() > this.tokenEnds - TOKEN_MARGIN_MS) {
      // One request for every URL made meanwhile (the files are linked all at once).
      if (!this.tokenAsked) {
        this.tokenAsked = api(`${episodePath(this.id)}/token`, { method: "POST" })
          .finally(() => { this.tokenAsked = null; });
      }
      const answer = await this.tokenAsked;
      this.token = answer.token;
      this.tokenEnds = Date.now() + answer.expires_in_s * 1000;
    }
    return `token=${encodeURIComponent(this.token)}`;
  }

  async fileUrl(name) {
    const query = await this.tokenQuery();
    const url = apiUrl(`${episodePath(this.id)}/artifacts/${encodeURIComponent(name)}`);
    if (query) url.search = query;
    return url.href;
  }

  // -- the end ------------------------------------------------------------------------------

  async finish() {
    if (this.finishedOnce || this.stopped) return;
    this.finishedOnce = true;
    clearInterval(this.timelineTimer);
    if (this.source) this.source.close();
    this.source = null;
    this.render();
    await Promise.all([this.showFiles(), this.drawTimeline()]);
    // All shown (files, screenplay, timeline): a mark for whoever waits for it, tests too.
    if (!this.stopped) $("episode-view").dataset.shown = "all";
  }

  async showFiles() {
    const names = Object.keys(this.view.artifacts || {});
    if (!names.length) return;
    let urls;
    try {
      urls = Object.fromEntries(await Promise.all(
        names.map(async (name) => [name, await this.fileUrl(name)])));
    } catch (err) {
      if (!lostKey(err)) $("episode-error").textContent = `Files unavailable: ${err.message}.`;
      return;
    }
    if (this.stopped) return;
    const list = $("downloads");
    list.replaceChildren(...names.map((name) => {
      const link = element("a", { href: urls[name], textContent: ARTIFACT_LABELS[name] || name });
      link.download = `${this.id}-${name}`;
      link.dataset.artifact = name;
      const item = element("li");
      item.append(link, element("span", { className: "note", textContent: ` ${name}` }));
      return item;
    }));
    $("downloads-box").hidden = false;
    if (urls["episode.mp4"]) {
      const player = $("player");
      if (urls["poster.png"]) player.poster = urls["poster.png"];
      player.src = urls["episode.mp4"];
      player.addEventListener("error", () => this.replay(), { once: true });
      $("player-box").hidden = false;
    }
    if (names.includes("script.json")) await this.showScreenplay();
    if (this.token) {
      // Links carry a token that runs out: renewed before it does (the player asks again by
      // itself when a seek is refused, see replay).
      const wait = Math.max(TOKEN_MARGIN_MS, this.tokenEnds - Date.now() - TOKEN_MARGIN_MS);
      this.linksTimer = setTimeout(() => this.later(() => this.renewLinks()), wait);
    }
  }

  async renewLinks() {
    if (this.stopped) return;
    this.token = null;
    for (const link of $("downloads").querySelectorAll("a[data-artifact]")) {
      link.href = await this.fileUrl(link.dataset.artifact);
    }
    const wait = Math.max(TOKEN_MARGIN_MS, this.tokenEnds - Date.now() - TOKEN_MARGIN_MS);
    this.linksTimer = setTimeout(() => this.later(() => this.renewLinks()), wait);
  }

  // The video's token ran out while it was paused: the next seek is refused. Go on with a
  // new one from where it was.
  async replay() {
    if (this.stopped || !state.key) return;
    const player = $("player");
    const at = player.currentTime;
    this.token = null;
    try {
      player.src = await this.fileUrl("episode.mp4");
    } catch (err) {
      reportError(err);
      return;
    }
    player.addEventListener("loadedmetadata", () => {
      player.currentTime = at;
    }, { once: true });
  }

  async showScreenplay() {
    let script;
    try {
      script = await api(`${episodePath(this.id)}/artifacts/script.json`);
    } catch (err) {
      if (!lostKey(err)) $("screenplay").textContent = `The script could not be read: ${
        err.message}.`;
      $("screenplay-box").hidden = false;
      return;
    }
    if (this.stopped) return;
    $("screenplay").replaceChildren(...screenplay(script));
    $("screenplay-box").hidden = false;
  }

  // -- stages and the timeline --------------------------------------------------------------

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

// A table: a row for the episode's own nodes (outline, stitch), then one per scene; a column
// per stage. A speech cell counts the scene's lines.
function drawStages(watch) {
  const scenes = watch.view && Array.isArray(watch.view.scenes) ? watch.view.scenes : [];
  const cells = new Map(); // "scene|stage" -> {done, running, failed, retrying}
  for (const [text, status] of watch.nodes) {
    const node = parseNode(text);
    if (!node) continue;
    const scene = EPISODE_STAGES.has(node.kind) ? 0 : node.index;
    const key = `${scene}|${node.kind}`;
    const counts = cells.get(key) || { done: 0, running: 0, retrying: 0, failed: 0 };
    counts[status] = (counts[status] || 0) + 1;
    cells.set(key, counts);
  }
  // A finished episode with no timeline to read its nodes from: its parts' states alone.
  const stages = watch.nodes.size || !watch.finished ? STAGES : [];
  const table = $("stages");
  const head = element("tr");
  head.append(element("th", { scope: "col", textContent: "Part" }),
    element("th", { scope: "col", textContent: "State" }));
  for (const stage of stages) head.append(element("th", { scope: "col", textContent: stage }));
  table.tHead.replaceChildren(head);
  const rows = [stageRow("Episode", watch.view ? watch.view.status : "", 0, cells, stages)];
  scenes.forEach((sceneState, at) => {
    rows.push(stageRow(`Scene ${at + 1}`, sceneState, at + 1, cells, stages));
  });
  table.tBodies[0].replaceChildren(...rows);
}

function stageRow(label, rowState, scene, cells, stages) {
  const row = element("tr");
  row.dataset.scene = String(scene);
  row.append(element("th", { scope: "row", textContent: label }),
    element("td", { textContent: rowState }));
  for (const stage of stages) {
    const cell = element("td");
    cell.dataset.stage = stage;
    const applies = scene === 0 ? EPISODE_STAGES.has(stage) : !EPISODE_STAGES.has(stage);
    const counts = cells.get(`${scene}|${stage}`);
    if (!applies) {
      cell.className = "na";
    } else if (counts) {
      const parts = [];
      for (const status of ["done", "running", "retrying", "failed"]) {
        if (!counts[status]) continue;
        const many = stage === "speech" || stage === "outline";
        parts.push(many ? `${counts[status]} ${status}` : status);
      }
      cell.textContent = parts.join(", ");
      cell.dataset.state = counts.failed ? "failed" : counts.running || counts.retrying
        ? "running" : "done";
      cell.className = `cell-${cell.dataset.state}`;
    } else {
      cell.textContent = "–";
      cell.className = "cell-waiting";
      cell.setAttribute("aria-label", "not started");
    }
    row.append(cell);
  }
  return row;
}

// `content:3`, `speech:3.2` (scene 3, line 2), `outline:1` (chunk 1), `stitch:0`: as
// pipelines.planner.NodeId writes them.
function parseNode(text) {
  const match = /^([a-z]+):(\d+)(?:\.(\d+))?$/.exec(String(text));
  if (!match) return null;
  return { kind: match[1], index: Number(match[2]), line: Number(match[3] || 0) };
}

// -- the screenplay ------------------------------------------------------------------------

// script.json (pipelines.screenplay.Script) as DOM nodes: never as HTML.
function screenplay(script) {
  const nodes = [element("h4", { textContent: script.title || "Untitled" })];
  if (script.logline) nodes.push(element("p", { className: "logline", textContent: script.logline }));
  if (Array.isArray(script.characters) && script.characters.length) {
    const list = element("dl", { className: "characters" });
    for (const character of script.characters) {
      list.append(element("dt", { textContent: character.name }),
        element("dd", { textContent: character.description }));
    }
    nodes.push(element("h5", { textContent: "Characters" }), list);
  }
  for (const scene of script.scenes || []) {
    const part = element("section", { className: "scene" });
    const outline = scene.outline || {};
    part.append(element("h5", { textContent: `Scene ${scene.number}: ${outline.title || ""}` }),
      element("p", { className: "slug", textContent: String(outline.setting || "") }));
    if (!scene.content) {
      part.append(element("p", { className: "note", textContent: "(this scene was not written)" }));
      nodes.push(part);
      continue;
    }
    part.append(element("p", { textContent: scene.content.setting }),
      element("p", { textContent: scene.content.action }),
      element("p", { className: "mood", textContent: `Mood: ${scene.content.mood}` }));
    for (const line of scene.dialogue || []) {
      const speech = element("div", { className: "line" });
      const speaker = element("p", { className: "speaker", textContent: line.speaker });
      if (line.direction) {
        speaker.append(element("span", { className: "direction",
          textContent: ` (${line.direction})` }));
      }
      speech.append(speaker, element("p", { className: "said", textContent: line.text }));
      part.append(speech);
    }
    nodes.push(part);
  }
  return nodes;
}

// -- small helpers -------------------------------------------------------------------------

function element(tag, properties = {}) {
  return Object.assign(document.createElement(tag), properties);
}

function paragraph(text) {
  return element("p", { textContent: text });
}

function parseEvent(message) {
  try {
    return JSON.parse(message.data);
  } catch {
    return null;
  }
}

function costOf(episode) {
  const report = episode.report || {};
  return typeof report.cost_usd === "number" ? report.cost_usd : episode.cost_usd || 0;
}

function money(usd) {
  return `$${Number(usd || 0).toFixed(4)}`;
}

function announce(text) {
  $("announce").textContent = text;
}

function reportError(err) {
  console.error(err);
}

async function cancelEpisode() {
  const watch = state.watch;
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

function boot() {
  state.fields = readFields();
  applyFields();
  $("continuity_mode").addEventListener("change", () => {
    const mode = $("continuity_mode").value;
    $("continuity_k-field").hidden = mode !== "window" && mode !== "batch";
  });
  $("signin").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) {
      $("signin-error").replaceChildren(paragraph("Enter your API key to sign in."));
      $("key").focus();
      return;
    }
    start(key).catch(reportError);
  });
  $("signout").addEventListener("click", signOut);
  $("submit-form").addEventListener("submit", (event) => {
    submitEpisodes(event).catch(reportError);
  });
  $("refresh").addEventListener("click", () => loadList());
  $("close-episode").addEventListener("click", () => closeEpisode());
  $("cancel").addEventListener("click", () => {
    cancelEpisode().catch(reportError);
  });
  start(sessionStorage.getItem(KEY_STORAGE)).catch(reportError);
}

boot();
