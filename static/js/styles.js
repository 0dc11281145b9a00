// The prompt-style picker (GET /api/v1/styles: STYLES_FILE, A1111's styles.csv). The chosen styles
// go into the request's `styles`; the server applies them to both prompts, in the order listed,
// and records the prompt as styled, so a restored job's prompt already holds its styles.

import { api } from "./api.js";
import { $ } from "./dom.js";

const picker = $("styles");
const hint = $("styles-hint");

/** Fill the picker, keeping the styles still chosen; the file's problem, if any, is the hint. */
export async function loadStyles() {
  const { data } = await api("/api/v1/styles");
  const kept = new Set(readStyles().styles);
  picker.replaceChildren(...data.styles.map((style) => {
    const option = new Option(style.name, style.name, false, kept.has(style.name));
    option.title = [style.prompt, style.negative_prompt && `Negative: ${style.negative_prompt}`].filter(Boolean).join("\n");
    return option;
  }));
  picker.disabled = data.styles.length === 0;
  hint.textContent = data.problem ? `Styles file not read: ${data.problem}`
    : data.styles.length ? "Applied to the prompt and negative prompt in this order." : "No styles (STYLES_FILE).";
}

/** The request's `styles`. */
export function readStyles() {
  return { styles: [...picker.selectedOptions].map((option) => option.value) };
}

/** A restored job's prompt already holds its styles: choose none, so they are not applied twice. */
export function clearStyles() {
  for (const option of picker.options) option.selected = false;
}
