// An ended episode's files: the download links, the video player (with its poster) and the
// screenplay. Their URLs carry the episode's token, made anew before it runs out; a video whose
// token ran out while it was paused is asked for again, from where it was.

import { lostKey, session } from "./api.js";
import { $, element, reportError } from "./dom.js";
import { showScreenplay } from "./screenplay.js";

const ARTIFACT_LABELS = {
  "episode.mp4": "Video", "poster.png": "Poster", "episode.srt": "Subtitles",
  "script.md": "Screenplay (Markdown)", "script.json": "Script (JSON)",
};

// Into the episode view (a Watch: its id, artifacts, token and timers; nothing is shown once
// it is closed).
export async function showFiles(watch) {
  const names = Object.keys(watch.view.artifacts || {});
  if (!names.length) return;
  let urls;
  try {
    urls = Object.fromEntries(await Promise.all(
      names.map(async (name) => [name, await watch.token.fileUrl(name)])));
  } catch (err) {
    if (!lostKey(err)) $("episode-error").textContent = `Files unavailable: ${err.message}.`;
    return;
  }
  if (watch.stopped) return;
  const list = $("downloads");
  list.replaceChildren(...names.map((name) => {
    const link = element("a", { href: urls[name], textContent: ARTIFACT_LABELS[name] || name });
    link.download = `${watch.id}-${name}`;
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
    player.addEventListener("error", () => replay(watch), { once: true });
    $("player-box").hidden = false;
  }
  if (names.includes("script.json")) await showScreenplay(watch);
  if (watch.token.value) {
    // Links carry a token that runs out: renewed before it does (the player asks again by
    // itself when a seek is refused, see replay).
    watch.linksTimer = setTimeout(() => watch.later(() => renewLinks(watch)),
      watch.token.renewIn());
  }
}

// The view closed: no more renewals, and the video let go.
export function stopFiles(watch) {
  clearTimeout(watch.linksTimer);
  const player = $("player");
  player.pause();
  player.removeAttribute("src");
  player.removeAttribute("poster");
  player.load();
}

async function renewLinks(watch) {
  if (watch.stopped) return;
  watch.token.forget();
  for (const link of $("downloads").querySelectorAll("a[data-artifact]")) {
    link.href = await watch.token.fileUrl(link.dataset.artifact);
  }
  watch.linksTimer = setTimeout(() => watch.later(() => renewLinks(watch)),
    watch.token.renewIn());
}

// The video's token ran out while it was paused: the next seek is refused. Go on with a
// new one from where it was.
async function replay(watch) {
  if (watch.stopped || !session.key) return;
  const player = $("player");
  const at = player.currentTime;
  watch.token.forget();
  try {
    player.src = await watch.token.fileUrl("episode.mp4");
  } catch (err) {
    reportError(err);
    return;
  }
  player.addEventListener("loadedmetadata", () => {
    player.currentTime = at;
  }, { once: true });
}
