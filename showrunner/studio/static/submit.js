// The form that queues episodes, one per premise line. Its defaults and limits come from
// EpisodeRequest (the page's data block, filled in by the server); only the fields set to
// something other than the model's default are sent, and a 422's field errors are shown beside
// their inputs.

import { api, ApiError, lostKey } from "./api.js";
import { $, paragraph } from "./dom.js";
import { loadList } from "./episodes.js";

const SUBMIT_FIELDS = ["scenes", "lines_per_scene", "style", "priority", "budget_usd", "seed",
  "on_scene_failure", "tier", "media", "cache"];

let fields = {}; // EpisodeRequest's fields: defaults and limits, from the page's data block

// The form as the model says: its defaults, its limits.
export function prepareForm() {
  fields = readFields();
  applyFields();
}

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

// The continuity select's change: K only for the modes that take one.
export function showContinuityK() {
  const mode = $("continuity_mode").value;
  $("continuity_k-field").hidden = mode !== "window" && mode !== "batch";
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
    const field = fields[name] || {};
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
  if (continuity !== (fields.continuity || {}).default) options.continuity = continuity;
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
function showFieldErrors(errors, premiseCount) {
  const shown = new Map(); // input -> messages
  const elsewhere = [];
  for (const { field, message } of errors) {
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

// The form's submit.
export async function submitEpisodes(event) {
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
