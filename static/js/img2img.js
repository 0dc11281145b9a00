// Image to image on the page: an input image (dropped, pasted, chosen, or "Use as input" on a
// result), a strength slider, a mask brush (size, erase, clear, invert; mouse, pen and touch via
// pointer events) and the refiner choice when the server has one. readImageFields() adds them to
// the request: the image and mask as PNG data URLs, the mask white where painted on a clear layer.

import { $, imageFileUrl } from "./dom.js";

const editor = $("init-editor");
const dropZone = $("drop-zone");
const fileInput = $("init-file");
const preview = $("init-preview");
const canvas = $("mask-canvas");
const brush = $("brush-size");
const erase = $("brush-erase");
const strength = $("strength");
const strengthValue = $("strength-value");
const refinerField = $("refiner-field");
const refiner = $("refiner");
const switchAt = $("refiner_switch_at");
const form = $("generate-form");

let imageUrl = null; // the input as a data URL
let limits = null;
let painting = false;
let last = null;

function fitted(width, height) {
  const maxW = (limits && limits.max_width) || width;
  const maxH = (limits && limits.max_height) || height;
  const scale = Math.min(1, maxW / width, maxH / height);
  const round8 = (v, max) => Math.max(64, Math.min(Math.floor(max / 8) * 8, Math.round(v / 8) * 8));
  return [round8(width * scale, maxW), round8(height * scale, maxH)];
}

/** Show ``url`` (a data URL) as the input, with a fresh mask, and size the output to it. */
export function setInputImage(url) {
  imageUrl = url;
  preview.onload = () => {
    canvas.width = preview.naturalWidth;
    canvas.height = preview.naturalHeight;
    clearMask();
    const [w, h] = fitted(preview.naturalWidth, preview.naturalHeight);
    form.width.value = w;
    form.height.value = h;
    editor.hidden = false;
    dropZone.classList.add("has-image");
  };
  preview.src = url;
}

function removeImage() {
  imageUrl = null;
  preview.removeAttribute("src");
  editor.hidden = true;
  dropZone.classList.remove("has-image");
  fileInput.value = "";
}

async function readFile(file) {
  const url = await imageFileUrl(file);
  if (url) setInputImage(url);
}

/** "Use as input": fetch an image the page shows (a result) and start from it. */
export async function useAsInput(src) {
  const blob = await (await fetch(src)).blob();
  await readFile(new File([blob], "input.png", { type: blob.type || "image/png" }));
}

function clearMask() {
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

function invertMask() {
  const ctx = canvas.getContext("2d");
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < data.data.length; i += 4) {
    data.data[i] = data.data[i + 1] = data.data[i + 2] = 255;
    data.data[i + 3] = 255 - data.data[i + 3];
  }
  ctx.putImageData(data, 0, 0);
}

function hasMask() {
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) return true;
  return false;
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
}

function stroke(event) {
  const ctx = canvas.getContext("2d");
  const [x, y] = point(event);
  ctx.globalCompositeOperation = erase.checked ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineWidth = Number(brush.value);
  ctx.lineCap = "round";
  ctx.beginPath();
  ctx.moveTo(...(last || [x, y]));
  ctx.lineTo(x, y);
  ctx.stroke();
  last = [x, y];
}

function initBrush() {
  canvas.addEventListener("pointerdown", (event) => {
    painting = true;
    last = null;
    canvas.setPointerCapture(event.pointerId);
    stroke(event);
  });
  canvas.addEventListener("pointermove", (event) => { if (painting) stroke(event); });
  for (const type of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(type, () => { painting = false; last = null; });
  }
  $("mask-clear").addEventListener("click", clearMask);
  $("mask-invert").addEventListener("click", invertMask);
  $("init-remove").addEventListener("click", removeImage);
}

function initInput() {
  fileInput.addEventListener("change", () => readFile(fileInput.files[0]));
  dropZone.addEventListener("dragover", (event) => { event.preventDefault(); dropZone.classList.add("dragging"); });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    readFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) readFile(file);
  });
  strength.addEventListener("input", () => { strengthValue.textContent = Number(strength.value).toFixed(2); });
  refiner.addEventListener("change", () => { switchAt.disabled = refiner.value !== "ensemble"; });
}

/** The server's limits and refiner (GET /api/v1/info): the refiner choice shows only with one. */
export function applyImageInfo(info) {
  limits = info.limits;
  refinerField.hidden = !info.refiner;
  if (!info.refiner) refiner.value = "none";
}

/** The image-to-image and refiner fields of the request (none when not used). */
export function readImageFields() {
  const fields = {};
  if (imageUrl) {
    fields.init_image = imageUrl;
    fields.strength = Number(strength.value);
    if (hasMask()) fields.mask = canvas.toDataURL("image/png");
  }
  if (refiner.value !== "none") {
    fields.refiner = refiner.value;
    if (refiner.value === "ensemble") fields.refiner_switch_at = Number(switchAt.value);
  }
  return fields;
}

export function initImageInput() {
  initInput();
  initBrush();
}
