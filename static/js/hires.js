// Hires fix on the page: a toggle with the scale, the upscaler and the denoise. The upscalers are
// A1111's latent modes and the pixel ones the server lists (GET /api/v1/upscalers where it has
// them, else the built-ins). readHiresFields() adds the request's `hires` group; passOf() says
// which pass a running job's step belongs to, for the progress line.
import { api } from "./api.js";
import { $ } from "./dom.js";

const LATENT = ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
  "Latent (nearest)", "Latent (nearest-exact)"];
const BUILTIN = ["Lanczos", "Nearest"];

const toggle = $("hires");
const fields = $("hires-fields");
const scale = $("hires_scale");
const upscaler = $("hires_upscaler");
const denoise = $("hires_denoise");
const denoiseValue = $("hires_denoise-value");

function fillUpscalers(names) {
  const chosen = upscaler.value || "Latent";
  upscaler.replaceChildren(...names.map((name) => new Option(name, name)));
  upscaler.value = names.includes(chosen) ? chosen : "Latent";
}

/** The upscalers: the latent modes, then the server's pixel upscalers (models included). */
export async function loadUpscalers() {
  let pixel = BUILTIN;
  try {
    const listing = await api("/api/v1/upscalers");
    pixel = (listing.upscalers || []).filter((u) => !u.broken && u.name !== "None").map((u) => u.name);
  } catch {
    // a server without the listing: the built-ins
  }
  fillUpscalers([...LATENT, ...pixel]);
}

export function initHires() {
  fillUpscalers([...LATENT, ...BUILTIN]);
  toggle.addEventListener("change", () => { fields.hidden = !toggle.checked; });
  denoise.addEventListener("input", () => { denoiseValue.textContent = Number(denoise.value).toFixed(2); });
}

/** The request's `hires` group, when the toggle is on. */
export function readHiresFields() {
  if (!toggle.checked) return {};
  return { hires: { scale: Number(scale.value), upscaler: upscaler.value, denoise: Number(denoise.value) } };
}

/** A job's hires choices back on the form (a gallery image's parameters). */
export function restoreHires(params) {
  toggle.checked = Boolean(params.hires);
  fields.hidden = !toggle.checked;
  if (!params.hires) return;
  if (params.hires_scale) scale.value = params.hires_scale;
  if ([...upscaler.options].some((o) => o.value === params.hires_upscaler)) upscaler.value = params.hires_upscaler;
  if (params.hires_denoise) {
    denoise.value = params.hires_denoise;
    denoiseValue.textContent = Number(denoise.value).toFixed(2);
  }
}

/** "first pass" or "hires pass" for step `step` of `total` of a job with `params` ("" without hires fix). */
export function passOf(params, step, total) {
  if (!params || !params.hires) return "";
  const second = Math.min(Math.floor((params.hires_steps || params.steps) * params.hires_denoise), total);
  return step > total - second ? "hires pass" : "first pass";
}
