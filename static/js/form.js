// The generate form: built from GET /api/v1/info, read into a request, filled from a past job,
// submitted (one job at a time from this page).

import { api } from "./api.js";
import { $ } from "./dom.js";
import { clearErrors, fieldInput, setError, showFieldErrors } from "./feedback.js";
import { describeError } from "./format.js";
import { refreshHealth } from "./health.js";
import { loadControlNets, readControlFields } from "./controlnet.js";
import { loadIpAdapters, readIpAdapterFields } from "./ip-adapter.js";
import { applyImageInfo, readImageFields } from "./img2img.js";
import { loadUpscalers, readHiresFields, restoreHires } from "./hires.js";
import { hasInfo, loadInfo } from "./info.js";
import { following, followJob, showSubmitting, submitFailed } from "./job.js";
import { initChoices, loadLoras, loadModels, readChoices, restoreChoices } from "./choices.js";
import { clearStyles, loadStyles, readStyles } from "./styles.js";
import { fillPresets, initPresets, syncPreset } from "./presets.js";
import { initSeed, rememberSeed } from "./seed.js";
import { initTokens, scheduleCount } from "./tokens.js";
import { fillSampling, initSampling, readSampling, restoreSampling } from "./sampling.js";

const NUMBERS = ["width", "height", "steps", "guidance_scale", "seed"];

const form = $("generate-form");
let settingsFailed = false;
let submitting = false;

function setNumberLimits(input, min, max, step) {
  if (min !== undefined && min !== null) input.min = String(min);
  if (max !== undefined && max !== null) input.max = String(max);
  if (step !== undefined && step !== null) input.step = String(step);
}

function applyLimits(limits) {
  setNumberLimits(form.width, limits.min_size, limits.max_width, limits.size_multiple);
  setNumberLimits(form.height, limits.min_size, limits.max_height, limits.size_multiple);
  setNumberLimits(form.steps, 1, limits.max_steps, 1);
  const [gmin, gmax] = limits.guidance_scale || [];
  setNumberLimits(form.guidance_scale, gmin, gmax, 0.1);
  setNumberLimits(form.seed, 0, limits.max_seed, 1);
  if (limits.max_prompt_length) {
    form.prompt.maxLength = limits.max_prompt_length;
    form.negative_prompt.maxLength = limits.max_prompt_length;
  }
}

function applyInfo(info) {
  applyLimits(info.limits);
  fillSampling(info, !form.dataset.filled);
  if (!form.dataset.filled) {
    const { defaults } = info;
    form.width.value = defaults.width;
    form.height.value = defaults.height;
    form.steps.value = defaults.steps;
    form.guidance_scale.value = defaults.guidance_scale;
    form.dataset.filled = "defaults";
  }
  fillPresets(info.limits);
  applyImageInfo(info);
}

/** Load the server's settings into the form; false (with the reason shown) when that failed. */
export async function loadSettings() {
  try {
    applyInfo(await loadInfo());
    await Promise.all([loadModels(), loadLoras(), loadStyles(), loadControlNets(), loadIpAdapters(), loadUpscalers()]);
    scheduleCount(form);
  } catch (err) {
    if (err.code !== "unauthorized") { // a 401 opens the API key panel instead
      setError(`Could not read the server's settings. ${describeError(err)}`);
      settingsFailed = true;
    }
    return false;
  }
  if (settingsFailed) setError("");
  settingsFailed = false;
  return true;
}

function intValue(name, problems) {
  const input = fieldInput(name);
  if (input.validity && input.validity.badInput) {
    problems[name] = ["Enter a whole number."];
    return undefined;
  }
  const raw = input.value.trim();
  return raw === "" ? undefined : Number(raw);
}

/** The request body from the form, or null (with the local problems shown) if a field is not a number. */
function readForm() {
  const problems = {};
  const body = { prompt: form.prompt.value, negative_prompt: form.negative_prompt.value };
  for (const name of ["width", "height", "steps", "guidance_scale"]) {
    const value = intValue(name, problems);
    if (value !== undefined) body[name] = value;
  }
  const seed = intValue("seed", problems);
  body.seed = seed === undefined ? null : seed; // empty: the server draws one
  Object.assign(body, readSampling());
  Object.assign(body, readChoices(), readStyles());
  Object.assign(body, readImageFields(), readControlFields(), readIpAdapterFields(), readHiresFields());
  if (Object.keys(problems).length) {
    showFieldErrors(problems);
    return null;
  }
  return body;
}

/** Fill the form with a job's parameters (a gallery image's). */
export function restoreParams(params) {
  if (!params) return;
  clearErrors();
  form.prompt.value = params.prompt ?? "";
  form.negative_prompt.value = params.negative_prompt ?? "";
  for (const name of NUMBERS) {
    if (params[name] !== undefined && params[name] !== null) fieldInput(name).value = params[name];
  }
  restoreSampling(params);
  restoreChoices(params);
  restoreHires(params);
  clearStyles();
  form.dataset.filled = "restored";
  syncPreset();
  scheduleCount(form);
}

function showSubmitError(err) {
  if (err.code === "validation_error") {
    const unplaced = showFieldErrors(err.fields);
    setError([describeError(err), ...unplaced].join(" "));
  } else {
    setError(describeError(err));
    if (err.code === "model_unavailable") refreshHealth();
  }
}

/** Send the form as a new job and follow it. */
async function send() {
  clearErrors();
  // Jobs are followed with the server's own facts (which statuses are final): have them first,
  // without replacing what was typed meanwhile by the defaults.
  if (!hasInfo()) {
    form.dataset.filled ||= "typed";
    if (!(await loadSettings())) return;
  }
  const body = readForm();
  if (!body) {
    setError(describeError({ code: "validation_error" }));
    return;
  }
  showSubmitting();
  try {
    const { data } = await api("/api/v1/jobs", { method: "POST", json: body });
    rememberSeed(data.params && data.params.seed);
    followJob(data);
  } catch (err) {
    submitFailed();
    showSubmitError(err);
  }
}

async function submit(event) {
  event.preventDefault();
  if (submitting || following()) return; // one job at a time from this page
  submitting = true;
  try {
    await send();
  } finally {
    submitting = false;
  }
}

/** Enter in a prompt generates (Shift+Enter: a new line); Enter in an input submits natively. */
function enterSubmits(area) {
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

export function focusPrompt() {
  form.prompt.focus();
}

export function initForm() {
  initPresets();
  initSeed();
  initChoices();
  initSampling();
  initTokens(form);
  enterSubmits(form.prompt);
  enterSubmits(form.negative_prompt);
  form.addEventListener("submit", submit);
}
