// The model status line: GET /health polled, faster while the model loads or the server is away.

import { fetchJson } from "./api.js";
import { $ } from "./dom.js";

const line = $("model-status");
const POLL_OK_MS = 30000;
const POLL_BUSY_MS = 2000;
const POLL_AWAY_MS = 3000;

let timer = null;
let lastStatus = null;
let onUp = () => {};

function show(kind, text) {
  line.dataset.state = kind;
  line.textContent = text;
}

function modelName(model) {
  if (!model) return "unknown model";
  const name = model.id || "the model";  // without the key (API_KEY set) /health names none
  return model.tiny ? `${name} (tiny test model — random weights, images are noise)` : name;
}

/** [state, text] for the status line from a /health body. */
function describe(body) {
  const model = body.model || {};
  const where = body.device ? ` on ${body.device}` : "";
  switch (body.status) {
    case "ok":
      return [
        model.tiny ? "tiny" : "ok",
        model.state === "ready"
          ? `Model: ${modelName(model)} — ready${where}`
          : `Model: ${modelName(model)} — loads on the first request`,
      ];
    case "loading":
      return ["loading", `Model: ${modelName(model)} — loading…`];
    case "error":
      return ["failed", `Model: ${modelName(model)} — failed: ${model.error || "unknown reason"}`];
    case "shutting_down":
      return ["loading", "The server is shutting down."];
    default:
      return ["unknown", `Server status: ${body.status}`];
  }
}

/** Ask /health now, show the answer, and schedule the next poll. */
export async function refreshHealth() {
  clearTimeout(timer);
  let body = null;
  try {
    ({ body } = await fetchJson("/health", { headers: { Accept: "application/json" } }));
  } catch { /* unreachable: below */ }
  if (!body || typeof body !== "object") {
    show("unreachable", "Server unreachable — retrying…");
    lastStatus = "unreachable";
    timer = setTimeout(refreshHealth, POLL_AWAY_MS);
    return;
  }
  show(...describe(body));
  const cameUp = body.status === "ok" && lastStatus !== "ok";
  lastStatus = body.status;
  if (cameUp) await onUp();
  timer = setTimeout(refreshHealth, body.status === "ok" ? POLL_OK_MS : POLL_BUSY_MS);
}

/** Start polling; whenUp() runs each time the server comes (back) up. */
export function startHealth(whenUp) {
  onUp = whenUp;
  refreshHealth();
}
