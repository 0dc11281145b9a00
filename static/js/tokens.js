// The token counter under the prompts: POST /api/v1/tokenize counts with the running model's own
// tokenizer and the encoder's 75-token chunking, so what it shows is what the encoder does (the
// page would otherwise need CLIP's 49k-entry vocabulary and a BPE implementation of its own).

import { api } from "./api.js";
import { $ } from "./dom.js";

const DELAY_MS = 300;
let timer = null;
let asked = 0;

function describe(count) {
  if (!count.tokens) return "";
  const chunks = count.chunks === 1 ? "1 chunk" : `${count.chunks} chunks`;
  const split = count.chunks > 1 ? `: ${count.chunk_tokens.join(" | ")}` : "";
  return `${count.tokens} tokens · ${chunks} of ${count.chunk_size}${split}`;
}

async function count(form) {
  const mine = ++asked;
  try {
    const { data } = await api("/api/v1/tokenize", {
      method: "POST", json: { prompt: form.prompt.value, negative_prompt: form.negative_prompt.value },
    });
    if (mine !== asked) return; // a newer count is on its way
    $("prompt-tokens").textContent = describe(data.prompt);
    $("negative_prompt-tokens").textContent = describe(data.negative_prompt);
  } catch {
    if (mine === asked) $("prompt-tokens").textContent = ""; // model not loaded yet: no count
  }
}

export function scheduleCount(form) {
  clearTimeout(timer);
  timer = setTimeout(() => count(form), DELAY_MS);
}

export function initTokens(form) {
  for (const area of [form.prompt, form.negative_prompt]) area.addEventListener("input", () => scheduleCount(form));
}
