// The sdxl_server web page: a form built from GET /api/v1/info, jobs followed over the websocket,
// a gallery of recent images. Native ES modules, no build step, nothing loaded from elsewhere.
// This entry wires the modules together and starts the page.

import { onUnauthorized } from "./api.js";
import { askForKey, initAuth } from "./auth.js";
import { setNote } from "./feedback.js";
import { focusPrompt, initForm, loadSettings, restoreParams } from "./form.js";
import { clearGallery, initGallery, loadGallery, setGalleryMessage } from "./gallery.js";
import { startHealth } from "./health.js";
import { initImageInput, useAsInput } from "./img2img.js";
import { initHires } from "./hires.js";
import { hasInfo, infoLoading } from "./info.js";
import { initJob, resumeJob, resumeWithKey, showPastResult } from "./job.js";
import { resultUrl } from "./result.js";
import { initUpscale, loadUpscalers } from "./upscale.js";

/** Read the server's settings; then the gallery and the job this tab followed before a reload. */
async function connect() {
  if (!(await loadSettings())) return false;
  loadGallery();
  loadUpscalers();
  resumeJob();
  return true;
}

function pick(job) {
  const params = job.params || {};
  if (params.upscale_image) { // an upscale job has no generation settings to load
    showPastResult(job);
    setNote(`Showing an image upscaled with ${params.upscaler}.`);
    return;
  }
  restoreParams(params);
  showPastResult(job);
  setNote(`Loaded the settings of “${params.prompt}” (seed ${params.seed}) into the form.`);
}

function keySaved() {
  setNote("API key saved in this browser.");
  loadGallery();
  resumeWithKey();
  focusPrompt();
}

async function start() {
  onUnauthorized(({ hadKey }) => askForKey(hadKey));
  initAuth({ verify: loadSettings, onSaved: keySaved, onForgotten: clearGallery });
  initForm();
  initImageInput();
  initHires();
  document.getElementById("use-as-input").addEventListener("click", () => {
    useAsInput(document.getElementById("result-image").src);
    focusPrompt();
  });
  initJob();
  initUpscale(resultUrl);
  initGallery(pick);
  startHealth(async () => {
    if (!hasInfo() && !infoLoading()) await connect(); // the server came up after the page
  });
  if (!(await connect())) setGalleryMessage("Recent images appear once the server answers.");
}

start();
