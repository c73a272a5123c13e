// Small helpers the studio's modules share: elements by id, DOM nodes made from text (never
// from HTML), announcements for screen readers, money, and the errors no one else handles.

export const $ = (id) => document.getElementById(id);

export function element(tag, properties = {}) {
  return Object.assign(document.createElement(tag), properties);
}

export function paragraph(text) {
  return element("p", { textContent: text });
}

export function announce(text) {
  $("announce").textContent = text;
}

export function reportError(err) {
  console.error(err);
}

// What an episode cost: its report's total once it has one, else the running sum.
export function costOf(episode) {
  const report = episode.report || {};
  return typeof report.cost_usd === "number" ? report.cost_usd : episode.cost_usd || 0;
}

export function money(usd) {
  return `$${Number(usd || 0).toFixed(4)}`;
}
