// An ended episode's screenplay: its script.json (pipelines.screenplay.Script) read and shown
// as DOM nodes, never as HTML.

import { api, episodePath, lostKey } from "./api.js";
import { $, element } from "./dom.js";

// Into the episode view's screenplay box (a Watch: nothing is shown once it is closed).
export async function showScreenplay(watch) {
  let script;
  try {
    script = await api(`${episodePath(watch.id)}/artifacts/script.json`);
  } catch (err) {
    if (!lostKey(err)) $("screenplay").textContent = `The script could not be read: ${
      err.message}.`;
    $("screenplay-box").hidden = false;
    return;
  }
  if (watch.stopped) return;
  $("screenplay").replaceChildren(...screenplay(script));
  $("screenplay-box").hidden = false;
}

function screenplay(script) {
  const nodes = [element("h4", { textContent: script.title || "Untitled" })];
  if (script.logline) {
    nodes.push(element("p", { className: "logline", textContent: script.logline }));
  }
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
