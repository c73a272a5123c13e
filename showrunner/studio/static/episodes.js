// The list of the signed-in tenant's episodes: the newest first (of more than 500, the newest
// 500, saying so), read again every 2 s while one is queued or running, its rows kept from one
// reading to the next (and the keyboard focus on them), each change of status announced, the
// open episode's row marked.

import { api, FINISHED, lostKey } from "./api.js";
import { $, announce, costOf, element, money, reportError } from "./dom.js";

export const LIST_REFRESH_MS = 2000; // while an episode is queued or running
const LIST_PAGES = 5; // pages of the list followed at most
const LIST_PAGE_SIZE = 100;

const rows = new Map(); // episode id -> its <li>
const statuses = new Map(); // episode id -> last status seen, to announce changes
let timer = null;
let round = 0; // answers of an older listing are dropped
let openId = null; // the episode open in its own view

export function loadList() {
  listEpisodes().catch(reportError);
}

// No more readings, and the answer of one under way dropped.
export function stopList() {
  clearTimeout(timer);
  round += 1;
}

export function clearList() {
  $("episodes").replaceChildren();
  $("list-more").hidden = true;
  rows.clear();
  statuses.clear();
}

async function listEpisodes() {
  clearTimeout(timer);
  const thisRound = ++round;
  const episodes = [];
  let cursor = null; // left over after the last page read: there are older ones
  try {
    for (let page = 0; page < LIST_PAGES; page += 1) {
      const query = new URLSearchParams({ limit: String(LIST_PAGE_SIZE), order: "newest" });
      if (cursor) query.set("cursor", cursor);
      const data = await api(`v1/episodes?${query}`);
      episodes.push(...data.episodes);
      cursor = data.next_cursor;
      if (!cursor) break;
    }
  } catch (err) {
    if (thisRound !== round || lostKey(err)) return;
    $("list-error").textContent = `The episodes could not be listed: ${err.message}. `
      + "Trying again.";
    timer = setTimeout(loadList, LIST_REFRESH_MS * 2);
    return;
  }
  if (thisRound !== round) return;
  $("list-error").textContent = "";
  renderList(episodes); // the newest first, as asked
  $("list-more").hidden = !cursor;
  $("list-more").textContent = `Showing your newest ${episodes.length} episodes.`;
  if (episodes.some((e) => !FINISHED.has(e.status))) {
    timer = setTimeout(loadList, LIST_REFRESH_MS);
  }
}

function renderList(episodes) {
  const list = $("episodes");
  const seen = new Set();
  episodes.forEach((episode, at) => {
    seen.add(episode.id);
    let row = rows.get(episode.id);
    if (!row) {
      row = newRow(episode.id);
      rows.set(episode.id, row);
    }
    updateRow(row, episode);
    // Moved only when out of place: moving a row would take the keyboard focus off it.
    if (list.children[at] !== row) list.insertBefore(row, list.children[at] || null);
  });
  for (const [id, row] of rows) {
    if (!seen.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  $("list-empty").hidden = episodes.length > 0;
  markOpen(openId);
}

// A row: its button opens the episode (the entry module listens to the list's clicks).
function newRow(id) {
  const row = element("li", { className: "episode-row" });
  row.dataset.episodeId = id;
  const button = element("button", { type: "button", className: "episode-open" });
  button.append(element("span", { className: "episode-title" }),
    element("span", { className: "episode-id", textContent: id }));
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
  const before = statuses.get(episode.id);
  if (before && before !== episode.status) {
    announce(`${episode.title || episode.id}: ${episode.status}.`);
  }
  statuses.set(episode.id, episode.status);
}

// An episode read by its own view, shown in its row too (a change of status announced):
// false if it has no row.
export function updateListed(id, episode) {
  const row = rows.get(id);
  if (!row) return false;
  updateRow(row, episode);
  return true;
}

// The row of the episode open in its own view marked as the current one; null: none.
export function markOpen(id) {
  openId = id;
  for (const [rowId, row] of rows) {
    const button = row.querySelector("button");
    if (rowId === id) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

export function focusRow(id) {
  const row = rows.get(id);
  if (row) row.querySelector("button").focus();
}
