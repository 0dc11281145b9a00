// Following one job: submitted here or resumed after a reload, its websocket events, resyncing
// after a dropped connection, cancelling, and how it ended.

import { api } from "./api.js";
import { setError } from "./feedback.js";
import { describeError, seconds } from "./format.js";
import { loadGallery } from "./gallery.js";
import { refreshHealth } from "./health.js";
import { isTerminal } from "./info.js";
import * as view from "./job-view.js";
import { hideResult, showResult } from "./result.js";
import { JobSocket } from "./socket.js";
import { session } from "./storage.js";

const JOB_STORAGE = "sdxl_server.currentJob";
const GONE = "The server no longer knows this job (did it restart?). Generate it again.";
const RESTARTING = "The server is restarting: this job stays queued and runs when it is back.";

let current = null; // { job: the server's job object, updated by events; socket; done }

const jobUrl = (id) => `/api/v1/jobs/${encodeURIComponent(id)}`;

/** Whether this page follows a job that has not ended. */
export function following() {
  return current !== null && !current.done;
}

export function showSubmitting() {
  view.setBusy(true);
  view.allowCancel(false); // nothing to cancel until the server answers
  view.showJobPanel("Submitting…");
  view.revealOutput();
}

export function submitFailed() {
  view.setBusy(false);
  view.hideJobPanel();
}

/** Follow a job the server described: over the websocket until it ends. */
export function followJob(job) {
  if (current) current.socket.close();
  const followed = { job: { ...job }, done: false };
  followed.socket = new JobSocket(job.id, {
    onEvent: (event) => { if (current === followed) handle(followed, event); },
    onPaused: view.showPaused,
    resync: () => resync(followed),
  });
  current = followed;
  session.set(JOB_STORAGE, job.id);
  view.showJob(job);
  view.renderJob(followed.job);
  if (isTerminal(job.status)) finish(followed);
  else {
    view.setBusy(true);
    followed.socket.open();
  }
}

/** Show the job as it now is: how it ended, or where it stands. */
function settle(followed) {
  if (isTerminal(followed.job.status)) finish(followed);
  else view.renderJob(followed.job);
}

function update(followed, fields) {
  Object.assign(followed.job, fields);
  view.renderJob(followed.job);
}

const EVENTS = {
  snapshot(followed, event) {
    Object.assign(followed.job, event.job);
    view.setConnection("");
    settle(followed);
  },
  queued: (followed, event) => update(followed, { status: "queued", position: event.position, eta_s: event.eta_s }),
  position: (followed, event) => EVENTS.queued(followed, event),
  started: (followed, event) => update(followed, {
    status: "running", position: 0, step: 0, total_steps: event.total_steps, eta_s: null,
  }),
  progress: (followed, event) => update(followed, {
    status: "running", step: event.step, total_steps: event.total_steps, eta_s: event.eta_s,
  }),
  preview(followed, event) {
    if (!followed.done && typeof event.image === "string" && event.image.startsWith("data:image/")) {
      view.showPreview(event.image);
    }
  },
  completed(followed, event) {
    const { image_url, meta_url, meta } = event;
    Object.assign(followed.job, { status: "succeeded", image_url, meta_url, meta });
    finish(followed);
  },
  failed(followed, event) {
    Object.assign(followed.job, { status: "failed", error: event.error });
    finish(followed);
  },
  cancelled(followed) {
    followed.job.status = "cancelled";
    finish(followed);
  },
  // The server is restarting: the job stays queued and runs when it is back; the socket closes
  // next and the page reconnects to the job's snapshot.
  suspended(followed) {
    update(followed, { status: "queued", position: null, eta_s: null });
    view.setConnection(RESTARTING);
  },
};

function handle(followed, event) {
  const handler = Object.hasOwn(EVENTS, event.type) ? EVENTS[event.type] : null;
  if (handler) handler(followed, event);
}

function finish(followed, message) {
  if (followed.done || current !== followed) return;
  followed.done = true;
  followed.socket.close();
  session.set(JOB_STORAGE, null);
  const { job } = followed;
  if (job.status === "succeeded") {
    const total = job.meta && job.meta.timings ? seconds(job.meta.timings.total_s) : null;
    view.showEnded(total ? `Done in ${total}.` : "Done.");
    showResult(job);
    loadGallery();
  } else if (job.status === "cancelled") {
    hideResult();
    view.showEnded("Cancelled: no image was made.");
  } else {
    hideResult();
    const text = message || `Failed: ${describeError(job.error)}`;
    view.showEnded(text);
    setError(text);
    if (job.error && job.error.error === "model_unavailable") refreshHealth();
  }
}

/** Ask the server for the job and show it; false when another job is followed by then. */
async function reload(followed) {
  const { data } = await api(jobUrl(followed.job.id));
  if (current !== followed) return false;
  Object.assign(followed.job, data);
  settle(followed);
  return true;
}

/** Before a reconnect: learn whether the job ended while the socket was away. */
async function resync(followed) {
  if (current !== followed || followed.done) return false;
  try {
    return (await reload(followed)) && !followed.done;
  } catch (err) {
    if (current !== followed) return false;
    if (err.status === 404) {
      followed.job.status = "failed";
      finish(followed, GONE);
      return false;
    }
    if (err.code === "unauthorized") {
      view.setConnection("Live updates paused: enter the API key to continue.");
      return false;
    }
    throw err; // try again later
  }
}

async function cancel() {
  const followed = current;
  if (!followed || followed.done) return;
  view.allowCancel(false);
  view.setStatus("Cancelling…");
  try {
    const { data } = await api(jobUrl(followed.job.id), { method: "DELETE" });
    if (data && isTerminal(data.status)) {
      Object.assign(followed.job, data);
      finish(followed);
    } else {
      view.setStatus("Cancel requested: the job stops at its next step.");
    }
  } catch (err) {
    if (err.status === 409) {
      reload(followed).catch(() => {}); // it ended first: show how (else the websocket will tell)
    } else {
      if (current === followed && !followed.done) view.allowCancel(true);
      setError(`Could not cancel the job. ${describeError(err)}`);
    }
  }
}

/** After a reload: follow the job this tab was following, if it has not ended. */
export async function resumeJob() {
  const id = session.get(JOB_STORAGE);
  if (!id || current) return;
  try {
    const { data } = await api(jobUrl(id));
    if (current) return;
    if (isTerminal(data.status)) session.set(JOB_STORAGE, null);
    else followJob(data);
  } catch (err) {
    if (err.code !== "unauthorized" && !current) session.set(JOB_STORAGE, null);
  }
}

/** With a new API key: reconnect to the job followed, or resume the one from before a reload. */
export function resumeWithKey() {
  if (following()) current.socket.reconnect();
  else resumeJob();
}

/** Show a past job's image (a gallery pick) unless a job is under way. */
export function showPastResult(job) {
  if (following()) return;
  view.hideJobPanel();
  showResult(job);
}

export function initJob() {
  view.setBusy(false);
  view.onCancel(cancel);
}
