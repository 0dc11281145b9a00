// The gallery: the server's recent images (so it survives reloads); picking one hands it on.

import { api, outputUrl } from "./api.js";
import { $, h } from "./dom.js";
import { describeError } from "./format.js";
import { knowsLastSeed, rememberSeed } from "./seed.js";
import { upscale } from "./upscale.js";

const GALLERY_URL = "/api/v1/jobs?status=succeeded&limit=24";
const list = $("gallery");
const message = $("gallery-message");
let onPick = () => {};

function title(params) {
  return params.upscale_image ? `Upscaled with ${params.upscaler}` : params.prompt || "untitled";
}

function thumbnail(job) {
  const params = job.params || {};
  const img = h("img", { src: outputUrl(job.image_url), alt: "", loading: "lazy", decoding: "async" });
  if (params.width && params.height) {
    img.width = params.width;
    img.height = params.height;
  }
  const caption = h(
    "span", { className: "thumb-caption" },
    h("span", { className: "thumb-prompt", textContent: title(params) }),
    h("span", { className: "thumb-details", textContent: `${params.width} × ${params.height} · seed ${params.seed}` }),
  );
  const action = h("span", { className: "visually-hidden", textContent: "Use the settings of: " });
  const button = h("button", { type: "button", className: "thumb" }, action, img, caption);
  button.dataset.jobId = job.id;
  button.addEventListener("click", () => onPick(job));
  const upscaling = h("button", { type: "button", className: "secondary thumb-upscale", textContent: "Upscale" });
  upscaling.setAttribute("aria-label", `Upscale the ${params.width} × ${params.height} image, seed ${params.seed}`);
  upscaling.addEventListener("click", () => upscale(job.image_url));
  return h("li", {}, button, upscaling);
}

export function setGalleryMessage(text) {
  message.textContent = text;
}

/** Show the server's recent images (newest first). */
export async function loadGallery() {
  try {
    const { data } = await api(GALLERY_URL);
    const jobs = ((data && data.jobs) || []).filter((job) => job.image_url);
    list.replaceChildren(...jobs.map(thumbnail));
    setGalleryMessage(jobs.length ? "" : "No images yet.");
    if (!knowsLastSeed() && jobs.length) rememberSeed(jobs[0].params && jobs[0].params.seed);
  } catch (err) {
    setGalleryMessage(err.code === "unauthorized"
      ? "Enter the API key to see recent images."
      : `Could not load recent images. ${describeError(err)}`);
  }
}

/** Empty the gallery: its images were another key's (each key sees only its own). */
export function clearGallery() {
  list.replaceChildren();
  setGalleryMessage("Enter the API key to see recent images.");
}

/** picked(job) runs when an image is chosen (click, Enter or Space). */
export function initGallery(picked) {
  onPick = picked;
}
