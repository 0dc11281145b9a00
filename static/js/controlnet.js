// ControlNet on the page: up to the server's MAX_CONTROLNETS units (GET /api/v1/controlnets),
// each with its control image, ControlNet (a Union model's control type), preprocessor (the ones
// GET /api/v1/preprocessors says run here) with its thresholds, weight, start/end, control and
// resize mode, and a preview of the control map the server makes (POST /api/v1/preprocess).
// readControlFields() adds the units that have an image to the request's `controlnet`.

import { api } from "./api.js";
import { fillSelect, h } from "./dom.js";
import { describeError, fieldMessages } from "./format.js";
import { UnitList } from "./units.js";

const units = new UnitList({
  field: "controlnet",
  title: "ControlNet unit",
  ids: ["control-section", "control-units", "control-add", "control-unit-template"],
  setup: setupUnit,
  onImage: (unit) => {
    showMap(unit, null);
    unit.querySelector("[data-preview]").disabled = false;
  },
});
let nets = []; // the usable ControlNets' listing entries
let modules = {}; // the preprocessors that run here: name -> listing entry (with its thresholds)

const value = (unit, key) => units.control(unit, key).value;

/** Fill each unit's choices; the section says so when the server has no usable ControlNet. */
export async function loadControlNets() {
  const [{ data: listed }, { data: preprocessors }] = await Promise.all([api("/api/v1/controlnets"), api("/api/v1/preprocessors")]);
  nets = listed.controlnets.filter((n) => n.usable);
  modules = Object.fromEntries(preprocessors.preprocessors.filter((p) => p.available).map((p) => [p.name, p]));
  units.offer(listed.max_controlnets, nets.length > 0, `none usable in CONTROLNET_DIR (${listed.controlnet_dir})`);
  for (const unit of units.units()) fillChoices(unit);
}

/** The choices from the listings, keeping the unit's own where they are still offered. */
function fillChoices(unit) {
  fillSelect(units.control(unit, "model"), nets.map((n) => [n.name, n.type ? `${n.name} (${n.type})` : n.name]));
  fillSelect(units.control(unit, "module"), Object.values(modules).map((p) => [p.name, `${p.name}: ${p.description}`]));
  syncType(unit);
  syncThresholds(unit);
}

function setupUnit(unit) {
  fillChoices(unit);
  syncType(unit, true);
  units.control(unit, "model").addEventListener("change", () => syncType(unit, true));
  units.control(unit, "module").addEventListener("change", () => {
    showMap(unit, null);
    syncType(unit, true);
    syncThresholds(unit);
  });
  unit.querySelector("[data-preview]").addEventListener("click", () => preview(unit));
}

/** A Union model's control types; `pick`: the one matching the preprocessor. */
function syncType(unit, pick = false) {
  const types = (nets.find((n) => n.name === value(unit, "model")) || {}).control_types || [];
  const type = units.control(unit, "type");
  unit.querySelector("[data-type-field]").hidden = types.length === 0;
  fillSelect(type, types.map((t) => [t, t]));
  const kind = value(unit, "module") === "tile_resample" ? "tile" : "canny";
  if (pick && types.includes(kind)) type.value = kind;
}

/** One number input per threshold the preprocessor declares, at its default, within its range. */
function syncThresholds(unit) {
  const box = unit.querySelector("[data-thresholds]");
  const declared = (modules[value(unit, "module")] || {}).thresholds || [];
  if (box.dataset.module === value(unit, "module")) return;
  box.dataset.module = value(unit, "module");
  box.replaceChildren(...declared.map((t, index) => {
    const key = ["threshold_a", "threshold_b"][index];
    const input = h("input", { type: "number", inputMode: "decimal", min: t.min, max: t.max, step: "any", value: t.default });
    input.dataset.key = key;
    input.addEventListener("input", () => showMap(unit, null)); // a preview shown is of other thresholds
    const label = h("label", { textContent: t.name });
    label.dataset.for = key;
    return h("div", { className: "field" }, label, input);
  }));
  units.renumber();
}

function thresholds(unit) {
  const found = {};
  for (const input of unit.querySelectorAll("[data-thresholds] input")) {
    if (input.value !== "") found[input.dataset.key] = Number(input.value);
  }
  return found;
}

function showMap(unit, image, text = "") {
  const map = unit.querySelector("[data-map]");
  map.hidden = !image;
  if (image) map.src = image;
  unit.querySelector("[data-status]").textContent = text;
}

async function preview(unit) {
  const image = units.image(unit);
  if (!image) return;
  showMap(unit, null, "Making the control map…");
  try {
    const json = { image, module: value(unit, "module"), ...thresholds(unit) };
    const { data } = await api("/api/v1/preprocess", { method: "POST", json });
    showMap(unit, `data:image/png;base64,${data.image}`, `The ${data.module} map, ${data.width}x${data.height}.`);
  } catch (err) {
    const why = err.code === "validation_error" ? fieldMessages(err.fields).join(" ") : describeError(err);
    showMap(unit, null, `No preview: ${why}`);
  }
}

function readUnit(unit) {
  const fields = {
    model: value(unit, "model"), image: units.image(unit), module: value(unit, "module"),
    weight: Number(value(unit, "weight")), control_mode: value(unit, "control_mode"),
    resize_mode: Number(value(unit, "resize_mode")), ...thresholds(unit),
  };
  for (const key of ["start", "end"]) if (value(unit, key) !== "") fields[key] = Number(value(unit, key));
  if (!unit.querySelector("[data-type-field]").hidden) fields.type = value(unit, "type");
  return fields;
}

/** The request's `controlnet`: the units that have a control image and a ControlNet. */
export function readControlFields() {
  const chosen = units.sent((unit) => units.image(unit) && value(unit, "model"));
  return chosen.length ? { controlnet: chosen.map(readUnit) } : {};
}
