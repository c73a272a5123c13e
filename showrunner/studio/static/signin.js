// Signing in and out. The API key is checked with GET /v1/whoami and kept in this tab's
// session storage only; a refused key is forgotten and the server's message shown. A keyless
// server needs no key, and a read-only one (a run's folder) shows no form to submit.

import { api, ApiError, session } from "./api.js";
import { $, paragraph, reportError } from "./dom.js";
import { clearList, loadList, stopList } from "./episodes.js";
import { closeEpisode, openEpisode } from "./episode.js";

const KEY_STORAGE = "showrunner.apiKey";

// The page opens with the tab's key, if it has one, else asks the server whether it needs one.
export function resume() {
  return start(sessionStorage.getItem(KEY_STORAGE));
}

// The sign-in form's submit.
export function submitKey(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) {
    $("signin-error").replaceChildren(paragraph("Enter your API key to sign in."));
    $("key").focus();
    return;
  }
  start(key).catch(reportError);
}

async function start(key) {
  session.key = key || null;
  let who;
  try {
    who = await api("v1/whoami");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      if (key) sessionStorage.removeItem(KEY_STORAGE);
      session.key = null;
      // No key tried: the server wants one, which is no error. A key tried: it was refused.
      showSignin(key ? err.message : null);
      return;
    }
    $("loading").textContent = `The studio could not start: ${err.message}.`;
    $("loading").hidden = false;
    return;
  }
  if (session.key) sessionStorage.setItem(KEY_STORAGE, session.key);
  showApp(who);
}

export function showSignin(serverMessage) {
  stopEverything();
  session.key = null;
  session.who = null;
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
  session.who = who;
  $("loading").hidden = true;
  $("signin-section").hidden = true;
  $("signin-error").replaceChildren();
  $("key").value = "";
  $("app").hidden = false;
  $("signout").hidden = !session.key;
  let whoText = session.key ? `Signed in as ${who.tenant}.` : "No API key needed: this server "
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

export function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  stopEverything();
  session.key = null;
  clearList();
  history.replaceState(null, "", location.pathname + location.search);
  // A keyless server serves this machine without a key: then the page stays usable.
  start(null).catch(reportError);
}

function stopEverything() {
  stopList();
  closeEpisode({ restoreFocus: false });
}
