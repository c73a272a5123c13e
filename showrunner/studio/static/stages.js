// One episode's stages table: a row for the episode's own nodes (outline, stitch), then one
// per scene; a column per stage, each cell done, running, retrying, failed or not started.

import { $, element } from "./dom.js";

const STAGES = ["outline", "content", "dialogue", "speech", "image", "clip", "compose",
  "stitch"];
const EPISODE_STAGES = new Set(["outline", "stitch"]); // nodes of no scene

// The table of an episode's view (a Watch: its status, its scenes, what its nodes did). A
// speech cell counts the scene's lines, an outline cell its chunks.
export function drawStages(watch) {
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
// pipelines.planner.NodeId writes them. A scene's lines count apart, so the line is not kept.
function parseNode(text) {
  const match = /^([a-z]+):(\d+)(?:\.\d+)?$/.exec(String(text));
  if (!match) return null;
  return { kind: match[1], index: Number(match[2]) };
}
