// What the server says about itself (GET /api/v1/info): limits, defaults, schedulers and which job
// statuses are final. The page's one source for these facts.

import { api } from "./api.js";

let info = null;
let loading = null;
let terminal = new Set();

/** Fetch the info (one request at a time); resolves to it, rejects with the API's error. */
export function loadInfo() {
  if (!loading) {
    loading = api("/api/v1/info")
      .then(({ data }) => {
        info = data;
        terminal = new Set(data.terminal_statuses || []);
        return data;
      })
      .finally(() => { loading = null; });
  }
  return loading;
}

export function hasInfo() {
  return info !== null;
}

export function infoLoading() {
  return loading !== null;
}

/** Whether a job with this status has ended (the server's terminal_statuses). */
export function isTerminal(status) {
  return terminal.has(status);
}

/** The server's label for a scheduler name ("euler_a": "Euler a"), else the name. */
export function schedulerLabel(name) {
  return (info && info.schedulers && info.schedulers[name]) || name;
}
