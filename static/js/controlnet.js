// ControlNet on the page: one control image (dropped or chosen), its ControlNet, preprocessor
// (its type) and weight, and a preview of the control map the server makes of it
// (POST /api/v1/preprocess) before generating. readControlFields() adds the unit to the request.

import { api } from "./api.js";
import { $ } from "./dom.js";
import { describeError } from "./format.js";

const fieldset = $("control-field");
const fileInput = $("control-file");
const source = $("control-source");
const model = $("control-model");
const module = $("control-module");
const type = $("control-type");
const typeField = $("control-type-field");
const weight = $("control-weight");
const weightValue = $("control-weight-value");
const previewButton = $("control-preview");
const map = $("control-map");
const status = $("control-status");

let imageUrl = null; // the control image as a data URL
let unions = {}; // ControlNet-Union models -> their control types

/** Fill the ControlNet and preprocessor choices; the fieldset stays hidden when there is no usable ControlNet. */
export async function loadControlNets() {
  const [{ data: nets }, { data: modules }] = await Promise.all([api("/api/v1/controlnets"), api("/api/v1/preprocessors")]);
  const usable = nets.controlnets.filter((n) => n.usable);
  unions = Object.fromEntries(usable.filter((n) => n.union).map((n) => [n.name, n.control_types]));
  model.replaceChildren(...usable.map((n) => new Option(n.type ? `${n.name} (${n.type})` : n.name, n.name)));
  const available = modules.preprocessors.filter((p) => p.available);
  module.replaceChildren(...available.map((p) => new Option(`${p.name}: ${p.description}`, p.name)));
  fieldset.hidden = usable.length === 0;
  syncType();
}

function syncType() {
  const types = unions[model.value] || [];
  typeField.hidden = types.length === 0;
  type.replaceChildren(...types.map((t) => new Option(t, t)));
  const kind = module.value === "tile_resample" ? "tile" : "canny";
  if (types.includes(kind)) type.value = kind;
}

function readFile(file) {
  if (!file || !file.type.startsWith("image/")) return;
  const reader = new FileReader();
  reader.onload = () => {
    imageUrl = reader.result;
    source.src = imageUrl;
    source.hidden = false;
    map.hidden = true;
    previewButton.disabled = false;
  };
  reader.readAsDataURL(file);
}

async function preview() {
  if (!imageUrl) return;
  status.textContent = "Making the control map…";
  try {
    const { data } = await api("/api/v1/preprocess", { method: "POST", json: { image: imageUrl, module: module.value } });
    map.src = `data:image/png;base64,${data.image}`;
    map.hidden = false;
    status.textContent = `The ${data.module} map, ${data.width}x${data.height}.`;
  } catch (err) {
    status.textContent = `No preview: ${describeError(err)}`;
  }
}

/** The request's `controlnet` units: one when a control image and a ControlNet are chosen. */
export function readControlFields() {
  if (!imageUrl || !model.value) return {};
  const unit = { model: model.value, image: imageUrl, module: module.value, weight: Number(weight.value) };
  if (!typeField.hidden) unit.type = type.value;
  return { controlnet: [unit] };
}

export function initControlNet() {
  fileInput.addEventListener("change", () => readFile(fileInput.files[0]));
  fieldset.addEventListener("dragover", (event) => event.preventDefault());
  fieldset.addEventListener("drop", (event) => {
    event.preventDefault();
    readFile(event.dataTransfer.files[0]);
  });
  weight.addEventListener("input", () => { weightValue.textContent = weight.value; });
  model.addEventListener("change", syncType);
  module.addEventListener("change", () => { map.hidden = true; syncType(); });
  previewButton.addEventListener("click", preview);
  $("control-remove").addEventListener("click", () => {
    imageUrl = null;
    fileInput.value = "";
    source.hidden = map.hidden = true;
    previewButton.disabled = true;
    status.textContent = "";
  });
}
