// The form's messages: field-level errors next to their fields, the alert line and the note line.

import { $ } from "./dom.js";
import { sentence } from "./format.js";

export const FIELDS = ["prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "sampler", "schedule"];

const form = $("generate-form");
const alertLine = $("form-message");
const noteLine = $("form-note");

/** The form control named so (an input, a textarea or a select). */
export function fieldInput(name) {
  return form.elements.namedItem(name);
}

export function setError(text) {
  alertLine.textContent = text;
}

export function setNote(text) {
  noteLine.textContent = text;
}

export function clearFieldError(name) {
  const input = fieldInput(name);
  const slot = $(`${name}-error`);
  if (slot) slot.textContent = "";
  if (input) input.removeAttribute("aria-invalid");
}

export function clearErrors() {
  for (const name of FIELDS) clearFieldError(name);
  setError("");
  setNote("");
}

/** Show the server's {name: [messages]} next to each field; return what had no field. */
/** A nested error (a list's items: `{controlnet: {0: {weight: [...]}}}`) as `[path, messages]` pairs. */
function flatErrors(name, messages) {
  if (messages && typeof messages === "object" && !Array.isArray(messages)) {
    return Object.entries(messages).flatMap(([key, inner]) => flatErrors(/^\d+$/.test(key) ? `${name}[${key}]` : `${name}.${key}`, inner));
  }
  return [[name, messages]];
}

export function showFieldErrors(fields) {
  const unplaced = [];
  let first = null;
  for (const [name, messages] of Object.entries(fields || {}).flatMap(([key, value]) => flatErrors(key, value))) {
    const text = (Array.isArray(messages) ? messages : [messages]).map(sentence).join(" ");
    const input = fieldInput(name);
    const slot = $(`${name}-error`);
    if (input && slot && FIELDS.includes(name)) {
      slot.textContent = text;
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    } else {
      unplaced.push(`${name === "_schema" ? "Request" : name}: ${text}`);
    }
  }
  if (first) first.focus();
  return unplaced;
}
