const form = document.getElementById("generate-form");
const result = document.getElementById("result");
const formError = document.getElementById("form-error");

async function showStatus() {
  const res = await fetch("/health");
  const health = await res.json();
  const model = health.model;
  document.getElementById("model-status").textContent =
    `Model: ${model.id}${model.tiny ? " (tiny random-weights test model: images are noise)" : ""} — ${health.status}`;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  formError.textContent = "";
  const body = { prompt: form.prompt.value, negative_prompt: form.negative_prompt.value };
  const res = await fetch("/api/v1/generate", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await res.json();
  if (!res.ok) { formError.textContent = data.message; return; }
  const img = document.createElement("img");
  img.src = data.image_url;
  img.alt = data.meta.prompt;
  result.replaceChildren(img);
});

showStatus();
