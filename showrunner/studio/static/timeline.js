// The run timeline, drawn as inline SVG from pipelines.timeline's data. No dependencies, no
// network and no stylesheet: report.html inlines this one file and works from a file:// URL.
//
//   legend of stages
//   lower bound marker ........................................
//   time axis
//   <episode> · episode   [outline]                    [stitch]
//   <episode> · scene 1          [content][dialogue][image.........][clip]
//                                                  [speech][speech]    (stacked: they run at once)
//   <episode> · scene 2                                  [///////compose]  (hatched: waiting for a
//                                                                           CPU or a rate limit)
//   provider charts: requests in flight, requests/s, the limit (dashed) and the limit plus
//                    one burst (dotted: the rate line may reach it with the limit kept)

const NS = "http://www.w3.org/2000/svg";

// Dark enough on white for small marks (each at least 4.5:1), and told apart by hue.
export const STAGE_COLOURS = {
  outline: "#1f4e9c", content: "#2e7d32", dialogue: "#7b3fa0", speech: "#b5540b",
  image: "#00796b", clip: "#ad1457", compose: "#5d4037", stitch: "#455a64",
};
const INK = "#1a1a1a";
const MUTED = "#595959";
const GRID = "#d9d9d9";
const SEPARATOR = "#ececec";  // between a lane and the next: faint, only to group its sub-rows
const IN_FLIGHT = "#1f4e9c";
const RATE = "#b5540b";
const LIMIT = "#b00020";

const LABELS = 170;  // the lanes' labels, left of the time axis
const RIGHT = 20;
const LANE = 16;     // a lane of one row, and its bar
const BAR = 12;
const ROW = 10;      // each sub-row of a lane that has several: slim, so a busy lane stays compact
const ROW_BAR = 8;
const ROW_PAD = 3;   // above and below a lane's sub-rows
const CRITICAL_STROKE = 2.5;
const CHART = 70;
const CHART_GAP = 28;
const FONT = "12px system-ui, -apple-system, 'Segoe UI', sans-serif";
const LEGEND_ROW = 18;    // a legend too wide for one line wraps onto the next
const LANES_BELOW = 54;   // from the legend's last line to the first lane: the bound's label, the axis
const WAIT_HATCH = "timeline-wait-hatch";  // the pattern that pales a bar's waiting part

function el(parent, name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
}

export function seconds(s) {
  return s < 10 ? s.toFixed(2) : s.toFixed(1);
}

function number(value) {
  return String(+value.toFixed(2));
}

// Round steps (1, 2, 5 × 10^k) giving about `count` ticks over `span`.
function tickStep(span, count) {
  const raw = Math.max(span, 1e-3) / count;
  const decade = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((f) => f * decade).find((step) => step >= raw);
}

function summary(data) {
  const parts = [`Run timeline: ${data.bars.length} nodes on ${data.lanes.length} lanes ` +
                 `over ${seconds(data.wall_s)} s`];
  if (data.bottleneck) {
    parts.push(`lower bound ${seconds(data.lower_bound_s)} s, set by ${data.bottleneck}`);
  }
  if (data.critical_path) {
    parts.push(`critical path of episode ${data.critical_path.episode}: ` +
               `${data.critical_path.nodes.length} nodes, ` +
               `${seconds(data.critical_path.length_s)} s`);
  }
  for (const p of data.providers) {
    const peak = Math.max(0, ...p.points.map((pt) => pt.rate_rps));
    parts.push(`${p.kind} peak ${peak.toFixed(1)} requests/s` +
               (p.limit_rps ? ` against a limit of ${p.limit_rps.toFixed(1)}` : ""));
  }
  return parts.join("; ") + ".";
}

// Pale diagonal stripes over a bar's colour: the part of its span it spent waiting, told from
// its work by lightness and by the hatch alike (so also in grey).
function waitHatch(svg) {
  const defs = el(svg, "defs");
  const pattern = el(defs, "pattern", { id: WAIT_HATCH, patternUnits: "userSpaceOnUse", width: 4,
                                        height: 4, patternTransform: "rotate(45)" });
  el(pattern, "rect", { x: 0, y: 0, width: 4, height: 4, fill: "#ffffff", "fill-opacity": 0.55 });
  el(pattern, "rect", { x: 0, y: 0, width: 2.5, height: 4, fill: "#ffffff",
                        "fill-opacity": 0.35 });
}

// The stages' colours, the critical path's outline and the waiting part's hatch, wrapping onto
// a further line where the next would pass the right edge. Returns the last line's baseline.
function legend(svg, y, stages, right) {
  let x = LABELS;
  const item = (name, swatch) => {
    const width = 24 + name.length * 7;
    if (x > LABELS && x + width - 8 > right) {
      x = LABELS;
      y += LEGEND_ROW;
    }
    swatch(x, y - 10);
    el(svg, "text", { x: x + 16, y, fill: INK }, name);
    x += width;
  };
  for (const stage of stages) {
    item(stage, (at, top) => el(svg, "rect", {
      x: at, y: top, width: 12, height: 12, fill: STAGE_COLOURS[stage] || MUTED,
      class: `legend stage-${stage}` }));
  }
  item("critical path", (at, top) => el(svg, "rect", {
    x: at, y: top, width: 12, height: 12, fill: "#ffffff", stroke: INK,
    "stroke-width": CRITICAL_STROKE }));
  item("waiting (for a CPU or a rate limit)", (at, top) => {
    el(svg, "rect", { x: at, y: top, width: 12, height: 12, fill: MUTED, class: "legend wait" });
    el(svg, "rect", { x: at, y: top, width: 12, height: 12, fill: `url(#${WAIT_HATCH})` });
  });
  return y;
}

function axis(svg, x, y, top, bottom, wall) {
  const step = tickStep(wall, 10);
  for (let t = 0; t <= wall + 1e-9; t += step) {
    el(svg, "line", { x1: x(t), x2: x(t), y1: top, y2: bottom, stroke: GRID });
    el(svg, "text", { x: x(t), y, fill: MUTED, "text-anchor": "middle" },
       `${+t.toFixed(6)} s`);
  }
}

// Seconds of the bar's span it spent waiting, at its start (0 in data from before waits were
// kept): work done here, for a CPU; a provider's node (one that made calls), in its limiter.
function waited(bar) {
  const wait = Number(bar.wait_s) || 0;
  return Math.min(Math.max(0, wait), Math.max(0, bar.end_s - bar.start_s));
}

function barTitle(bar) {
  const took = seconds(bar.end_s - bar.start_s);
  const status = bar.status === "done" ? "" : ` · ${bar.status}`;
  const wait = waited(bar);
  const waiting = wait > 0
    ? ` · waited ${seconds(wait)} s ${bar.calls > 0 ? "for the provider's limit" : "for a CPU"}`
    : "";
  return `${bar.node} · ${bar.stage} · ${took} s${waiting} · ${bar.calls} calls · ` +
         `$${bar.cost_usd.toFixed(4)}${status}${bar.critical ? " · critical path" : ""}`;
}

function barWidth(bar, x) {
  return Math.max(1, x(bar.end_s) - x(bar.start_s));  // an instant still shows
}

// Nodes of one lane run at once (a scene's speech lines beside its picture and its clip), and in
// one row a long bar would hide the short ones under it. So each lane is split into sub-rows by
// greedy interval partitioning: bars taken by start, each put in the first sub-row already free
// by then. That needs no more sub-rows than the most bars on screen at once in the lane, and
// bars that follow one another share a row. It packs the drawn extents (an instant is still 1px
// wide), so no two bars of a row overlap on screen. Returns each bar's sub-row and each lane's
// count of sub-rows.
function packRows(data, x) {
  const rowOf = new Map();
  const rightEdges = data.lanes.map(() => []);  // per lane, per sub-row: where its last bar ends
  const byStart = [...data.bars].sort((a, b) => a.lane - b.lane || a.start_s - b.start_s ||
                                                a.end_s - b.end_s);
  for (const bar of byStart) {
    const edges = rightEdges[bar.lane];
    const left = x(bar.start_s);
    let row = edges.findIndex((edge) => edge <= left);
    if (row < 0) row = edges.push(left) - 1;
    edges[row] = left + barWidth(bar, x);
    rowOf.set(bar, row);
  }
  return { rowOf, rows: rightEdges.map((edges) => Math.max(1, edges.length)) };
}

// Where each lane goes, top to bottom: a lane of one row keeps the full bar height, a lane of
// several gets slim sub-rows.
function laneBoxes(rows, top) {
  let y = top;
  return rows.map((count) => {
    const box = count === 1
      ? { top: y, height: LANE, row: LANE, bar: BAR, pad: 0 }
      : { top: y, height: count * ROW + 2 * ROW_PAD, row: ROW, bar: ROW_BAR, pad: ROW_PAD };
    y += box.height;
    return box;
  });
}

function lanes(svg, data, x, boxes, rowOf) {
  let episode = null;
  data.lanes.forEach((lane, at) => {
    const box = boxes[at];
    if (at > 0) {  // a rule between episodes, a faint line between a lane and the next
      const rule = lane.episode !== episode ? { stroke: MUTED } : { stroke: SEPARATOR };
      el(svg, "line", { x1: 0, x2: x.right, y1: box.top, y2: box.top, ...rule });
    }
    episode = lane.episode;
    el(svg, "text", { x: LABELS - 8, y: box.top + box.height / 2, fill: INK, "text-anchor": "end",
                      "dominant-baseline": "central", class: "lane-label" }, lane.label);
  });
  const place = (bar) => {
    const box = boxes[bar.lane];
    return { x: x(bar.start_s), width: barWidth(bar, x), height: box.bar,
             y: box.top + box.pad + rowOf.get(bar) * box.row + (box.row - box.bar) / 2 };
  };
  const group = el(svg, "g", { class: "bars" });
  for (const bar of data.bars) {
    const attrs = {
      ...place(bar), fill: STAGE_COLOURS[bar.stage] || MUTED,
      class: `bar stage-${bar.stage} status-${bar.status}${bar.critical ? " critical" : ""}`,
      "data-node": bar.node,
    };
    if (bar.status !== "done") attrs["fill-opacity"] = 0.45;  // failed or still running
    if (bar.status === "failed") Object.assign(attrs, { stroke: LIMIT, "stroke-dasharray": "3 2" });
    const rect = el(group, "rect", attrs);
    el(rect, "title", {}, barTitle(bar));
    // Its waiting part, hatched over its start: no pointer events, so hovering it still shows
    // the bar's title (which says how long it waited, and for what).
    const wait = waited(bar);
    if (wait > 0) {
      const box = place(bar);
      el(group, "rect", { ...box, width: Math.min(box.width, x(bar.start_s + wait) - box.x),
                          fill: `url(#${WAIT_HATCH})`, class: "bar-wait",
                          "pointer-events": "none" });
    }
  }
  // The critical path's outlines go above every bar, so a neighbour in the next sub-row never
  // covers them; they take no pointer events, so hovering still shows the bar's own title.
  const outlines = el(svg, "g", { class: "critical-outlines", "pointer-events": "none" });
  for (const bar of data.bars.filter((b) => b.critical)) {
    el(outlines, "rect", { ...place(bar), fill: "none", stroke: INK,
                           "stroke-width": CRITICAL_STROKE });
  }
}

function lowerBound(svg, data, x, top, bottom) {
  if (!data.bottleneck) return;
  const at = x(data.lower_bound_s);
  el(svg, "line", { x1: at, x2: at, y1: top, y2: bottom, stroke: LIMIT, "stroke-width": 2,
                    "stroke-dasharray": "6 3", class: "lower-bound" });
  const label = `lower bound ${seconds(data.lower_bound_s)} s — set by ${data.bottleneck}`;
  const anchor = at > (LABELS + x.right) / 2 ? "end" : "start";
  el(svg, "text", { x: anchor === "end" ? at - 4 : at + 4, y: top + 12, fill: LIMIT,
                    "text-anchor": anchor, "font-weight": "bold", class: "lower-bound-label" },
     label);
}

function polyline(group, points, x, y, value, attrs) {
  const coords = points.map((p) => `${x(p.t_s).toFixed(1)},${y(value(p)).toFixed(1)}`);
  return el(group, "polyline", { points: coords.join(" "), fill: "none", ...attrs });
}

function providerChart(svg, provider, x, top) {
  const group = el(svg, "g", { class: "provider", "data-kind": provider.kind });
  const peakRate = Math.max(0, ...provider.points.map((p) => p.rate_rps));
  const peakInFlight = Math.max(0, ...provider.points.map((p) => p.in_flight));
  const scale = Math.max(1, provider.burst_rps || provider.limit_rps || 0, peakRate,
                         peakInFlight);
  const y = (v) => top + CHART - (v / scale) * CHART;
  el(group, "line", { x1: LABELS, x2: x.right, y1: top + CHART, y2: top + CHART, stroke: MUTED });
  el(group, "text", { x: LABELS - 8, y: top + 14, fill: INK, "text-anchor": "end",
                      "font-weight": "bold" }, provider.kind);
  el(group, "text", { x: LABELS - 8, y: top + 30, fill: MUTED, "text-anchor": "end" },
     provider.limit_rps ? `limit ${number(provider.limit_rps)} req/s` : "no limit");
  if (provider.burst_rps) {
    el(group, "text", { x: LABELS - 8, y: top + 78, fill: MUTED, "text-anchor": "end" },
       `bursts to ${number(provider.burst_rps)}`);
  }
  el(group, "text", { x: LABELS - 8, y: top + 46, fill: MUTED, "text-anchor": "end" },
     `peak ${number(peakRate)} req/s`);
  el(group, "text", { x: LABELS - 8, y: top + 62, fill: MUTED, "text-anchor": "end" },
     `${peakInFlight} in flight at most`);
  if (provider.limit_rps) {
    const at = y(provider.limit_rps);
    el(group, "line", { x1: LABELS, x2: x.right, y1: at, y2: at, stroke: LIMIT,
                        "stroke-width": 1.5, "stroke-dasharray": "6 4", class: "limit" });
  }
  if (provider.burst_rps) {
    const at = y(provider.burst_rps);
    const line = el(group, "line", { x1: LABELS, x2: x.right, y1: at, y2: at, stroke: LIMIT,
                                     "stroke-width": 1, "stroke-dasharray": "1 3",
                                     class: "burst" });
    el(line, "title", {}, `${number(provider.burst_rps)} req/s: the limit plus one burst. ` +
       "The limiter lets a full bucket go at once, so over one window the rate may reach " +
       "this without passing the limit.");
  }
  polyline(group, provider.points, x, y, (p) => p.in_flight,
           { stroke: IN_FLIGHT, "stroke-width": 1.5, class: "in-flight" });
  polyline(group, provider.points, x, y, (p) => p.rate_rps,
           { stroke: RATE, "stroke-width": 1.5, class: "rate" });
}

function chartLegend(svg, y) {
  const items = [["in flight", IN_FLIGHT, null], ["requests/s", RATE, null],
                 ["limit (requests/s)", LIMIT, "6 4"], ["limit plus one burst", LIMIT, "1 3"]];
  let x = LABELS;
  for (const [name, colour, dash] of items) {
    el(svg, "line", { x1: x, x2: x + 20, y1: y - 4, y2: y - 4, stroke: colour,
                      "stroke-width": 2, ...(dash ? { "stroke-dasharray": dash } : {}) });
    el(svg, "text", { x: x + 24, y, fill: INK }, name);
    x += 40 + name.length * 7;
  }
}

// Draws `data` into `container`, replacing what was there: the live page calls it again as an
// episode goes on.
export function drawTimeline(container, data) {
  container.replaceChildren();
  if (!data || !data.bars || data.bars.length === 0) {
    const note = document.createElement("p");
    note.className = "timeline-empty";
    note.textContent = "Nothing has started yet: no timeline to draw.";
    container.appendChild(note);
    return null;
  }
  const width = Math.max(640, container.clientWidth || 960);
  const wall = Math.max(data.wall_s, data.lower_bound_s || 0, 1e-3);
  const x = (t) => LABELS + (t / wall) * (width - LABELS - RIGHT);
  x.right = width - RIGHT;

  const svg = el(container, "svg", {
    xmlns: NS, width, viewBox: `0 0 ${width} 0`, role: "img", "aria-label": summary(data),
    class: "timeline", style: `font: ${FONT}; background: #ffffff; max-width: 100%; height: auto`,
  });
  el(svg, "title", {}, summary(data));
  waitHatch(svg);
  const lanesTop = legend(svg, 16, data.stages, x.right) + LANES_BELOW;
  const { rowOf, rows } = packRows(data, x);
  const boxes = laneBoxes(rows, lanesTop);
  const lanesBottom = boxes.length ? boxes.at(-1).top + boxes.at(-1).height : lanesTop;
  const chartsTop = lanesBottom + 40;
  const height = chartsTop + data.providers.length * (CHART + CHART_GAP) + 10;
  svg.setAttribute("height", String(height));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  axis(svg, x, lanesTop - 6, lanesTop, height - 10, data.wall_s);  // through the charts too
  lanes(svg, data, x, boxes, rowOf);
  lowerBound(svg, data, x, lanesTop - 34, lanesBottom);
  if (data.providers.length) {
    chartLegend(svg, chartsTop - 12);
    data.providers.forEach((p, i) => providerChart(svg, p, x, chartsTop + i * (CHART + CHART_GAP)));
  }
  return svg;
}
