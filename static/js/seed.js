// The seed controls: the last seed remembered in this browser, "Reuse last seed" and "Random".

import { $ } from "./dom.js";
import { clearFieldError, fieldInput } from "./feedback.js";
import { local } from "./storage.js";

const LAST_SEED_STORAGE = "sdxl_server.lastSeed";
const seedInput = fieldInput("seed");
const reuse = $("reuse-seed");
const random = $("random-seed");
const lastSeedText = $("last-seed");

let lastSeed = readLastSeed();

function readLastSeed() {
  const raw = local.get(LAST_SEED_STORAGE);
  return raw !== null && /^\d+$/.test(raw) ? Number(raw) : null;
}

function updateSeedUi() {
  reuse.disabled = lastSeed === null;
  lastSeedText.textContent = lastSeed === null ? "" : `Last seed: ${lastSeed}.`;
}

export function knowsLastSeed() {
  return lastSeed !== null;
}

/** Remember a job's seed for "Reuse last seed" (kept across reloads). */
export function rememberSeed(seed) {
  if (seed === null || seed === undefined) return;
  lastSeed = seed;
  local.set(LAST_SEED_STORAGE, seed);
  updateSeedUi();
}

export function initSeed() {
  updateSeedUi();
  reuse.addEventListener("click", () => {
    if (lastSeed === null) return;
    seedInput.value = lastSeed;
    clearFieldError("seed");
  });
  random.addEventListener("click", () => {
    seedInput.value = "";
    clearFieldError("seed");
  });
}
