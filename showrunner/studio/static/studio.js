// The Showrunner studio: sign in, submit premises, follow episodes live, watch what they made.
//
// The page's entry module: it wires the page's controls to the modules beside it and starts.
//   api.js         fetch with the key, API errors, episode tokens
//   signin.js      signing in and out
//   submit.js      the form that queues episodes
//   episodes.js    the live list of episodes
//   episode.js     one episode's live view, its cancel and its timeline
//   stages.js      that view's stages table
//   files.js       an ended episode's downloads and video
//   screenplay.js  its screenplay
//   dom.js         small helpers
//   timeline.js    the timeline drawing (report.html carries it inline too)
// Plain ES modules: no framework, no build step, nothing fetched from elsewhere, no inline
// script. Every text that comes from the server (titles, errors, the screenplay) is put in
// with textContent or DOM nodes, never as HTML. URLs are relative to the page, so it works
// under a route prefix too.

import { whenKeyLost } from "./api.js";
import { $, reportError } from "./dom.js";
import { cancelEpisode, closeEpisode, openEpisode } from "./episode.js";
import { loadList } from "./episodes.js";
import { resume, showSignin, signOut, submitKey } from "./signin.js";
import { prepareForm, showContinuityK, submitEpisodes } from "./submit.js";

function boot() {
  whenKeyLost(showSignin);
  prepareForm();
  $("continuity_mode").addEventListener("change", showContinuityK);
  $("signin").addEventListener("submit", submitKey);
  $("signout").addEventListener("click", signOut);
  $("submit-form").addEventListener("submit", (event) => {
    submitEpisodes(event).catch(reportError);
  });
  $("refresh").addEventListener("click", () => loadList());
  // A row's button opens its episode.
  $("episodes").addEventListener("click", (event) => {
    const button = event.target.closest("button.episode-open");
    if (button) openEpisode(button.closest("[data-episode-id]").dataset.episodeId);
  });
  $("close-episode").addEventListener("click", () => closeEpisode());
  $("cancel").addEventListener("click", () => {
    cancelEpisode().catch(reportError);
  });
  resume().catch(reportError);
}

boot();
