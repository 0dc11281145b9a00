// The size presets: SDXL's native resolutions, scaled down to the server's limits, kept in step
// with the width and height fields.

import { $ } from "./dom.js";
import { clearFieldError, fieldInput } from "./feedback.js";

// SDXL's native resolutions (about one megapixel each) and their aspect ratios.
const PRESETS = [
  [1024, 1024, "1:1 square"],
  [1152, 896, "9:7 landscape"],
  [896, 1152, "7:9 portrait"],
  [1216, 832, "19:13 (~3:2) landscape"],
  [832, 1216, "13:19 (~2:3) portrait"],
  [1344, 768, "7:4 (~16:9) landscape"],
  [768, 1344, "4:7 (~9:16) portrait"],
  [1536, 640, "12:5 (~21:9) landscape"],
  [640, 1536, "5:12 (~9:21) portrait"],
];

const select = $("size-preset");
const width = fieldInput("width");
const height = fieldInput("height");

/** The presets that fit the limits (scaled down where needed), as {value: "WxH", label}. */
export function fitPresets(limits) {
  const multiple = limits.size_multiple || 8;
  const seen = new Set();
  const presets = [];
  for (const [w, h, ratio] of PRESETS) {
    const scale = Math.min(1, limits.max_width / w, limits.max_height / h);
    const fitWidth = Math.floor((w * scale) / multiple) * multiple;
    const fitHeight = Math.floor((h * scale) / multiple) * multiple;
    if (fitWidth < limits.min_size || fitHeight < limits.min_size) continue;
    const value = `${fitWidth}x${fitHeight}`;
    if (seen.has(value)) continue;
    seen.add(value);
    const label = scale < 1
      ? `${fitWidth} × ${fitHeight} · ${ratio} (from ${w} × ${h})`
      : `${fitWidth} × ${fitHeight} · ${ratio}`;
    presets.push({ value, label });
  }
  return presets;
}

/** Offer the presets that fit these limits, plus "Custom". */
export function fillPresets(limits) {
  select.replaceChildren(new Option("Custom", ""));
  for (const preset of fitPresets(limits)) select.append(new Option(preset.label, preset.value));
  syncPreset();
}

/** Select the preset matching the width and height fields, else "Custom". */
export function syncPreset() {
  const value = `${width.value}x${height.value}`;
  const match = [...select.options].some((o) => o.value === value);
  select.value = match ? value : "";
}

export function initPresets() {
  select.addEventListener("change", () => {
    if (!select.value) return;
    [width.value, height.value] = select.value.split("x");
    clearFieldError("width");
    clearFieldError("height");
  });
  width.addEventListener("input", syncPreset);
  height.addEventListener("input", syncPreset);
}
