// Readable text: durations, sentences, and an error's explanation for people.

import { NetworkError } from "./api.js";

/** "under a second", "12 s", "2 min 5 s"; null when there is no number. */
export function seconds(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return null;
  if (value < 1) return "under a second";
  const s = Math.round(value);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
}

/** The text, trimmed, ending with a full stop. */
export function sentence(text) {
  const t = String(text || "").trim();
  if (!t) return "";
  return /[.!?)]$/.test(t) ? t : `${t}.`;
}

/** A readable sentence for an error: an ApiError, a NetworkError, or a job's {error, message}. */
export function describeError(err) {
  if (!err) return "Something went wrong.";
  if (err instanceof NetworkError) {
    return "Cannot reach the server (network error). Check that it is running, then try again.";
  }
  const code = err.code || err.error;
  const message = err.serverMessage ?? err.message ?? "";
  switch (code) {
    case "unauthorized":
      return "This server needs an API key: enter it in the “API key” field above.";
    case "queue_full": {
      const wait = Number.parseInt(err.retryAfter, 10);
      return Number.isFinite(wait)
        ? `The queue is full. Try again in ${wait} seconds.`
        : "The queue is full. Try again in a little while.";
    }
    case "out_of_memory":
      return "The GPU ran out of memory for this image. Try a smaller size (768 × 768 or less) or fewer steps.";
    case "model_unavailable":
      return `The model is not available: ${sentence(message) || "it failed to load."}`;
    case "validation_error":
      return "Some settings need fixing: see the messages next to the fields.";
    case "body_too_large":
      return "The request is too large: shorten the prompts.";
    case "cancelled":
      return "The job was cancelled.";
    default:
      if (message) return sentence(message);
      if (err.status) return `The server answered ${err.status}${err.statusText ? ` ${err.statusText}` : ""}.`;
      return "Something went wrong.";
  }
}

/** A nested error (a list's items: `{controlnet: {0: {weight: [...]}}}`) as `[path, messages]` pairs. */
function flatError(name, messages) {
  if (messages && typeof messages === "object" && !Array.isArray(messages)) {
    return Object.entries(messages).flatMap(([key, inner]) => flatError(/^\d+$/.test(key) ? `${name}[${key}]` : `${name}.${key}`, inner));
  }
  return [[name, messages]];
}

/** The server's field errors (`fields` of a 422) as `[path, messages]` pairs: `controlnet[1].weight`. */
export function flatErrors(fields) {
  return Object.entries(fields || {}).flatMap(([key, value]) => flatError(key, value));
}

/** The server's field errors as sentences: "threshold_a: Must be between 1 and 255." */
export function fieldMessages(fields) {
  return flatErrors(fields).map(([name, messages]) => `${name}: ${[messages].flat().map(sentence).join(" ")}`);
}
