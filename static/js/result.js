// The finished image: the picture, its parameters, download and metadata links.

import { outputUrl } from "./api.js";
import { $, h } from "./dom.js";
import { seconds } from "./format.js";
import { schedulerLabel } from "./info.js";

const figure = $("result");
const image = $("result-image");
const paramList = $("result-params");
const download = $("download-link");
const metaLink = $("meta-link");
const placeholder = $("output-empty");
let shownUrl = null; // the image_url of the result shown

/** The shown result's image URL (what its Upscale button upscales). */
export function resultUrl() {
  return shownUrl;
}

const MODES = { img2img: "image to image", inpaint: "inpainting", upscale: "upscale" };

function addParam(name, value) {
  if (value === undefined || value === null || value === "") return;
  paramList.append(h("dt", { textContent: name }), h("dd", { textContent: String(value) }));
}

function listParams(params) {
  paramList.replaceChildren();
  addParam("Prompt", params.prompt);
  addParam("Negative prompt", params.negative_prompt);
  addParam("Size", params.width && `${params.width} × ${params.height}`);
  addParam("Steps", params.steps);
  addParam("Guidance", params.guidance_scale);
  addParam("Seed", params.seed);
  addParam("Sampler", params.sampler_name || schedulerLabel(params.sampler || params.scheduler));
  addParam("Schedule type", params.schedule_type);
  if (params.presets && Object.keys(params.presets).length) {
    addParam("From presets", Object.entries(params.presets).map(([field, where]) => `${field} (${where})`).join(", "));
  }
  if (params.mode && params.mode !== "txt2img") addParam("Mode", MODES[params.mode] || params.mode);
  if (params.mode === "upscale") addParam("Upscaler", params.upscaler);
  if (params.init_image || params.init_image_sha256) addParam("Strength", params.strength);
  if (params.refiner && params.refiner !== "none") addParam("Refiner", params.refiner);
  addParam("Model", params.model_id);
  if (params.timings) addParam("Time", seconds(params.timings.total_s));
}

/** Show a succeeded job's image and parameters. */
export function showResult(job) {
  const params = { ...(job.params || {}), ...(job.meta || {}) };
  placeholder.hidden = true;
  figure.hidden = false;
  shownUrl = job.image_url;
  image.src = outputUrl(job.image_url);
  image.alt = `Generated image: ${params.prompt || "untitled"}`;
  if (params.width && params.height) {
    image.width = params.width;
    image.height = params.height;
  }
  download.href = outputUrl(job.image_url);
  download.download = `sdxl-${params.seed ?? "image"}-${String(job.id).slice(0, 8)}.png`;
  metaLink.href = outputUrl(job.meta_url);
  listParams(params);
}

export function hideResult() {
  figure.hidden = true;
}

/** "Your image appears here": shown when neither a job nor a result is. */
export function showPlaceholder(jobShown) {
  placeholder.hidden = jobShown || !figure.hidden;
}
