// The model picker (GET /api/v1/models, with where each is loaded) and the LoRA picker
// (GET /api/v1/loras): each chosen LoRA gets a weight slider (starting at its card's preferred
// weight) and goes into the request's `loras`, never into the prompt text. Picking a model or a
// LoRA with a preset puts its recommended settings into the form, and says so.

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { applyPreset, presetText } from "./sampling.js";

const model = $("model");
const modelHint = $("model-hint");
const loraAdd = $("lora-add");
const loraList = $("lora-list");
const loraHint = $("lora-hint");
const modelPreset = $("model-preset");
const presets = { models: {}, loras: {} }; // name -> its listing entry (preset, card fields)
const LORA_MIN = -5;
const LORA_MAX = 5;

function modelLabel(entry) {
  const state = entry.broken ? `broken: ${entry.broken}` : entry.loaded ? `loaded on ${entry.loaded}` : "not loaded";
  return `${entry.name}${entry.default ? " (default)" : ""} · ${state}`;
}

/** Fill the model picker; keeps the choice (or a restored one) when it still exists. */
export async function loadModels(wanted) {
  const { data } = await api("/api/v1/models");
  const keep = wanted ?? model.value;
  model.replaceChildren(
    ...data.models.map((entry) => Object.assign(new Option(modelLabel(entry), entry.name), { disabled: Boolean(entry.broken) })),
  );
  const names = data.models.filter((m) => !m.broken).map((m) => m.name);
  presets.models = Object.fromEntries(data.models.map((m) => [m.name, m]));
  model.value = names.includes(keep) ? keep : data.default;
  modelHint.textContent = names.length > 1 ? "Switching models takes a while the first time." : "";
  showModelPreset();
}

function showModelPreset() {
  const entry = presets.models[model.value] || {};
  modelPreset.textContent = entry.preset ? `Recommended: ${presetText(entry.preset)}`
    : entry.preset_problem ? `Preset not used: ${entry.preset_problem}` : "";
}

function weightRow(name, weight) {
  const id = `lora-weight-${loraList.children.length}-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const slider = h("input", { type: "range", id, min: LORA_MIN, max: LORA_MAX, step: 0.05, value: weight });
  const shown = h("output", { htmlFor: id, className: "lora-weight", textContent: Number(weight).toFixed(2) });
  slider.addEventListener("input", () => { shown.textContent = Number(slider.value).toFixed(2); });
  const remove = h("button", { type: "button", className: "secondary", textContent: "Remove" });
  remove.setAttribute("aria-label", `Remove LoRA ${name}`);
  const card = presets.loras[name] || {};
  const about = [card.activation_text && `activation text: ${card.activation_text}`,
    card.preset && `recommended: ${presetText(card.preset)}`, card.notes].filter(Boolean).join(" · ");
  const row = h("li", { className: "lora-row" }, h("label", { htmlFor: id, textContent: name }), slider, shown, remove,
    ...(about ? [h("p", { className: "hint", textContent: about })] : []));
  row.dataset.name = name;
  remove.addEventListener("click", () => { row.remove(); syncAddable(); });
  return row;
}

function chosen() {
  return [...loraList.children].map((row) => row.dataset.name);
}

function syncAddable() {
  const taken = new Set(chosen());
  for (const option of loraAdd.options) option.disabled = option.value === "" || taken.has(option.value);
  loraAdd.value = "";
}

/** Fill the LoRA choices (usable files only; the others are named with their problem). */
export async function loadLoras() {
  const { data } = await api("/api/v1/loras");
  const usable = data.loras.filter((l) => l.usable);
  presets.loras = Object.fromEntries(data.loras.map((l) => [l.name, l]));
  loraAdd.replaceChildren(new Option(usable.length ? "Add a LoRA…" : "No LoRAs in LORA_DIR", ""), ...usable.map((l) => new Option(l.name, l.name)));
  const broken = data.loras.filter((l) => !l.usable);
  loraHint.textContent = broken.length ? `Not usable: ${broken.map((l) => `${l.name} (${l.problem})`).join("; ")}` : "";
  syncAddable();
}

/** The request's `model` and `loras`. */
export function readChoices() {
  return {
    model: model.value || "",
    loras: [...loraList.children].map((row) => ({ name: row.dataset.name, weight: Number(row.querySelector("input").value) })),
  };
}

/** Put a past job's model and LoRAs back. */
export function restoreChoices(params) {
  if (params.model && [...model.options].some((o) => o.value === params.model && !o.disabled)) model.value = params.model;
  loraList.replaceChildren(...(params.loras || []).map((l) => weightRow(l.name, l.weight)));
  syncAddable();
}

export function initChoices() {
  loraAdd.addEventListener("change", () => {
    if (!loraAdd.value) return;
    const card = presets.loras[loraAdd.value] || {};
    loraList.append(weightRow(loraAdd.value, card.preferred_weight || 1));
    applyPreset(card.preset);
    syncAddable();
  });
  model.addEventListener("change", () => {
    showModelPreset();
    applyPreset((presets.models[model.value] || {}).preset);
  });
}
