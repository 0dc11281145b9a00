// The form's messages: field-level errors next to their fields, the alert line and the note line.

import { $ } from "./dom.js";
import { flatErrors, sentence } from "./format.js";

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
  for (const slot of form.querySelectorAll("[data-unit-error], [data-list-error]")) slot.textContent = "";
  for (const input of form.querySelectorAll("[data-unit] [aria-invalid]")) input.removeAttribute("aria-invalid");
  setError("");
  setNote("");
}

/** Where a field's error goes: the main fields' own slots; a unit's field (`controlnet[1].weight`)
 * the unit's error line, with the field's label; anything else of a list (`controlnet`) its line. */
function errorPlace(name) {
  const input = fieldInput(name);
  if (FIELDS.includes(name)) return input && $(`${name}-error`) ? { input, slot: $(`${name}-error`), label: "" } : null;
  const unit = input instanceof Element ? input.closest("[data-unit]") : null;
  if (unit) return { input, slot: unit.querySelector("[data-unit-error]"), label: input.labels[0]?.firstChild.textContent.trim() };
  const slot = form.querySelector(`[data-list-error="${CSS.escape(name.split(/[[.]/)[0])}"]`);
  return slot ? { input: null, slot, label: name } : null;
}

/** Show the server's {name: [messages]} next to each field; return what had no place. */
export function showFieldErrors(fields) {
  const unplaced = [];
  let first = null;
  for (const [name, messages] of flatErrors(fields)) {
    const text = (Array.isArray(messages) ? messages : [messages]).map(sentence).join(" ");
    const place = errorPlace(name);
    if (!place) {
      unplaced.push(`${name === "_schema" ? "Request" : name}: ${text}`);
      continue;
    }
    const { input, slot, label } = place;
    slot.textContent = [slot.textContent, label ? `${label}: ${text}` : text].filter(Boolean).join(" ");
    const section = slot.closest("details");
    if (section) section.open = true;
    if (input) input.setAttribute("aria-invalid", "true");
    first = first || input;
  }
  if (first) first.focus();
  return unplaced;
}
