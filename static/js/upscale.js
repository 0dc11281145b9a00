// Upscaling a finished image: the Upscale button of the result and of each gallery image, with
// the upscaler and scale chosen beside the result (the list comes from GET /api/v1/upscalers).
// The upscale is a job like a generation: followed over the websocket, its tiles as progress.

import { api, outputUrl } from "./api.js";
import { $, h } from "./dom.js";
import { setError } from "./feedback.js";
import { describeError, sentence } from "./format.js";
import { followJob, following, showSubmitting, submitFailed } from "./job.js";

const choice = $("upscale-upscaler");
const scale = $("upscale-scale");

/** Fill the upscaler list with the usable ones, a model first if there is one. */
export async function loadUpscalers() {
  try {
    const { data } = await api("/api/v1/upscalers");
    const usable = ((data && data.upscalers) || []).filter((u) => !u.broken);
    if (!usable.length) return;
    choice.replaceChildren(...usable.map((u) => h("option", {
      value: u.name, textContent: u.scale ? `${u.name} (${u.scale}×)` : u.name,
    })));
    const model = usable.find((u) => u.kind === "model");
    if (model) choice.value = model.name;
  } catch {
    // the built-in choices of the page stay
  }
}

/** The image at url as a data: URL (read with the key when outputs need it). */
async function dataUrl(url) {
  const response = await fetch(outputUrl(url), { cache: "no-store" });
  if (!response.ok) throw new Error(`The image could not be read (HTTP ${response.status}).`);
  const blob = await response.blob();
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/** Upscale the output image at url with the chosen upscaler and scale; follow its job. */
export async function upscale(url) {
  if (following()) {
    setError("Wait for the running job to finish (or cancel it) before upscaling.");
    return;
  }
  showSubmitting();
  try {
    const image = await dataUrl(url);
    const json = { image, upscaler: choice.value || "Lanczos", scale: Number(scale.value) || 2 };
    const { data } = await api("/api/v1/upscale", { method: "POST", json });
    followJob(data);
  } catch (err) {
    submitFailed();
    const why = err.code === "validation_error" ? sentence(err.serverMessage) : describeError(err);
    setError(`Upscaling failed. ${why}`);
  }
}

/** The result's Upscale button; the gallery's call upscale() themselves. */
export function initUpscale(resultUrl) {
  $("upscale-result").addEventListener("click", () => upscale(resultUrl()));
}
