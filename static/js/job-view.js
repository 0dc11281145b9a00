// The job panel: status line, queue position and ETA, progress bar, live preview, connection state,
// and the Generate and Cancel buttons' state.

import { $ } from "./dom.js";
import { seconds } from "./format.js";
import { passOf } from "./hires.js";
import { hideResult, showPlaceholder } from "./result.js";

const el = {
  job: $("job"), status: $("job-status"), connection: $("connection"),
  progressBlock: $("progress-block"), progress: $("progress"), progressText: $("progress-text"),
  preview: $("preview"), generate: $("generate"), cancel: $("cancel"),
};

/** Busy: Generate is off and Cancel is on, and the other way round. */
export function setBusy(busy) {
  el.generate.disabled = busy;
  el.generate.setAttribute("aria-disabled", busy ? "true" : "false");
  el.cancel.disabled = !busy;
}

export function allowCancel(allowed) {
  el.cancel.disabled = !allowed;
}

export function onCancel(handler) {
  el.cancel.addEventListener("click", handler);
}

export function setStatus(text) {
  el.status.textContent = text;
}

export function setConnection(text) {
  el.connection.textContent = text;
}

/** The socket dropped (closeCode 1008: the server found this page too slow) and will reconnect. */
export function showPaused(closeCode) {
  const why = closeCode === 1008 ? "the server dropped a slow connection" : "the connection was lost";
  setConnection(`Live updates paused (${why}); reconnecting…`);
}

export function showPreview(image) {
  el.preview.src = image;
  el.preview.hidden = false;
}

function clearProgress() {
  setConnection("");
  el.progressBlock.hidden = true;
  el.preview.hidden = true;
  el.preview.removeAttribute("src");
}

/** The panel with a fresh status line, in place of the last result. */
export function showJobPanel(text) {
  showPlaceholder(true);
  hideResult();
  el.job.hidden = false;
  setStatus(text || "");
  clearProgress();
}

/** The panel for a job: its id, and a preview box of the image's size. */
export function showJob(job) {
  showJobPanel("");
  el.job.dataset.jobId = job.id;
  const { width, height } = job.params || {};
  if (width && height) {
    el.preview.width = width;
    el.preview.height = height;
  }
}

export function hideJobPanel() {
  el.job.hidden = true;
  showPlaceholder(false);
}

/** The job has ended: no progress, preview or connection state left. */
export function showEnded(text) {
  setBusy(false);
  clearProgress();
  setStatus(text);
}

/** On a narrow screen the result is below the form: bring the job into view (focus stays put). */
export function revealOutput() {
  const box = el.job.getBoundingClientRect();
  if (box.top >= 0 && box.bottom <= window.innerHeight) return;
  const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  el.job.scrollIntoView({ block: "nearest", behavior: smooth ? "smooth" : "auto" });
}

function renderQueued(job) {
  const eta = seconds(job.eta_s);
  const where = job.position ? `position ${job.position} in the queue` : "in the queue";
  setStatus(eta
    ? `Queued: ${where}; done in about ${eta}.`
    : `Queued: ${where} (no time estimate until this server has made an image).`);
  el.progressBlock.hidden = true;
}

function renderRunning(job) {
  const total = job.total_steps || (job.params && job.params.steps) || 1;
  const step = job.step || 0;
  const eta = seconds(job.eta_s);
  setStatus(job.cancel_requested ? "Cancelling…" : "Generating…");
  el.progressBlock.hidden = false;
  el.progress.max = total;
  el.progress.value = step;
  el.progress.setAttribute("aria-valuetext", `step ${step} of ${total}`);
  const pass = passOf(job.params, Math.max(step, 1), total);
  el.progressText.textContent = `step ${step}/${total}${pass ? ` (${pass})` : ""}`
    + `${eta ? ` · about ${eta} left` : step ? "" : " · starting…"}`;
}

/** Show where a job under way stands: queued (position, ETA) or running (step, ETA). */
export function renderJob(job) {
  if (job.status === "queued") renderQueued(job);
  else if (job.status === "running") renderRunning(job);
}
