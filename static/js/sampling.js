// The sampler and schedule pickers (GET /api/v1/info's samplers and schedules: each sampler lists
// the schedule types it runs), and a model's or LoRA's preset put into the form.

import { $ } from "./dom.js";

const form = $("generate-form");
const sampler = $("sampler");
const schedule = $("schedule");
let samplers = {};
let schedules = {};

/** Offer only the schedule types the chosen sampler runs, keeping the choice when it still fits. */
function syncSchedules() {
  const keep = schedule.value || "automatic";
  const allowed = (samplers[sampler.value] || {}).schedules || ["automatic"];
  schedule.replaceChildren(...allowed.map((name) => new Option((schedules[name] || {}).label || name, name)));
  schedule.value = allowed.includes(keep) ? keep : "automatic";
}

/** Fill both pickers from the info (the defaults too, the first time). */
export function fillSampling(info, first) {
  samplers = info.samplers || {};
  schedules = info.schedules || {};
  const keep = sampler.value;
  sampler.replaceChildren(
    ...Object.entries(samplers).map(([name, s]) => new Option(name === "default" ? `Default (${s.label})` : s.label, name)),
  );
  sampler.value = first ? info.defaults.sampler : keep || info.defaults.sampler;
  if (first) schedule.value = info.defaults.schedule;
  syncSchedules();
}

export function readSampling() {
  return { sampler: sampler.value || "default", schedule: schedule.value || "automatic" };
}

/** A past job's sampler and schedule (the older `scheduler` field's names too). */
export function restoreSampling(params) {
  const older = { dpmpp_2m_karras: ["dpmpp_2m", "karras"], dpmpp_2m_sde_karras: ["dpmpp_2m_sde", "karras"] };
  const [name, kind] = params.sampler ? [params.sampler, params.schedule] : older[params.scheduler] || [params.scheduler, "automatic"];
  if (name && samplers[name]) sampler.value = name;
  syncSchedules();
  if (kind && [...schedule.options].some((o) => o.value === kind)) schedule.value = kind;
}

/** A preset's settings as words ("4 steps, guidance 1, Euler, SGM Uniform"). */
export function presetText(preset) {
  if (!preset) return "";
  const parts = [];
  if (preset.steps) parts.push(`${preset.steps} steps`);
  if (preset.guidance_scale !== undefined) parts.push(`guidance ${preset.guidance_scale}`);
  if (preset.sampler) parts.push((samplers[preset.sampler] || {}).label || preset.sampler);
  if (preset.schedule) parts.push((schedules[preset.schedule] || {}).label || preset.schedule);
  if (preset.width) parts.push(`${preset.width} × ${preset.height}`);
  if (preset.clip_skip) parts.push(`CLIP skip ${preset.clip_skip}`);
  return parts.join(", ");
}

/** Put a preset's settings into the form (the user may still change them before generating). */
export function applyPreset(preset) {
  if (!preset) return;
  for (const name of ["steps", "guidance_scale", "width", "height"]) {
    if (preset[name] !== undefined) form[name].value = preset[name];
  }
  if (preset.sampler) restoreSampling({ sampler: preset.sampler, schedule: preset.schedule || "automatic" });
  else if (preset.schedule) restoreSampling({ sampler: sampler.value, schedule: preset.schedule });
}

export function initSampling() {
  sampler.addEventListener("change", syncSchedules);
}
