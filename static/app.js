// The sdxl_server web page: a form built from GET /api/v1/info, jobs followed over the websocket,
// a gallery of recent images. Plain JavaScript, no build step, nothing loaded from elsewhere.

const KEY_STORAGE = "sdxl_server.apiKey";
const LAST_SEED_STORAGE = "sdxl_server.lastSeed";
const JOB_STORAGE = "sdxl_server.currentJob";
const GALLERY_URL = "/api/v1/jobs?status=succeeded&limit=24";
const FIELDS = ["prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "scheduler"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
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
const RECONNECT_MAX_MS = 5000;

const $ = (id) => document.getElementById(id);
const form = $("generate-form");
const el = {
  modelStatus: $("model-status"),
  auth: $("auth"), authForm: $("auth-form"), apiKey: $("api-key"), authError: $("auth-error"),
  forgetKey: $("forget-key"),
  preset: $("size-preset"), scheduler: $("scheduler"), seed: $("seed"),
  reuseSeed: $("reuse-seed"), randomSeed: $("random-seed"), lastSeed: $("last-seed"),
  generate: $("generate"), cancel: $("cancel"), formMessage: $("form-message"), formNote: $("form-note"),
  job: $("job"), jobStatus: $("job-status"), connection: $("connection"),
  progressBlock: $("progress-block"), progress: $("progress"), progressText: $("progress-text"),
  preview: $("preview"), outputEmpty: $("output-empty"),
  result: $("result"), resultImage: $("result-image"), resultParams: $("result-params"),
  download: $("download-link"), metaLink: $("meta-link"),
  gallery: $("gallery"), galleryMessage: $("gallery-message"),
};

const state = {
  info: null,
  infoLoading: null,
  job: null, // the job this page follows: the server's job object, updated by events
  ws: null,
  reconnectTimer: null,
  reconnectAttempts: 0,
  healthTimer: null,
  healthStatus: null,
  lastSeed: readLastSeed(),
};

// ---------------------------------------------------------------------------- storage

function storageGet(store, name) {
  try { return store.getItem(name); } catch { return null; }
}

function storageSet(store, name, value) {
  try {
    if (value === null || value === undefined || value === "") store.removeItem(name);
    else store.setItem(name, String(value));
  } catch { /* private mode: keep going without persistence */ }
}

function apiKey() {
  return storageGet(localStorage, KEY_STORAGE) || "";
}

function readLastSeed() {
  const raw = storageGet(localStorage, LAST_SEED_STORAGE);
  return raw !== null && /^\d+$/.test(raw) ? Number(raw) : null;
}

// ---------------------------------------------------------------------------- HTTP

class NetworkError extends Error {
  constructor() {
    super("network error");
    this.code = "network_error";
  }
}

class ApiError extends Error {
  constructor(response, body) {
    super((body && body.message) || `HTTP ${response.status}`);
    this.status = response.status;
    this.statusText = response.statusText;
    this.code = (body && body.error) || null;
    this.serverMessage = (body && body.message) || "";
    this.fields = (body && body.fields) || null;
    this.retryAfter = response.headers.get("Retry-After");
  }
}

/** fetch() with the API key, JSON in and out; throws NetworkError or ApiError. */
async function api(path, { method = "GET", json } = {}) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, cache: "no-store" };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new NetworkError();
  }
  let body = null;
  try {
    const text = await response.text();
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null; // not JSON (a proxy's error page): described by its status below
  }
  if (response.status === 401) {
    showAuth(key ? "The server refused this key. Check it and try again." : "");
  }
  if (!response.ok) throw new ApiError(response, body);
  return { status: response.status, data: body, headers: response.headers };
}

/** Output files need ?token= when the server protects them (OUTPUTS_NEED_KEY) and a key is set. */
function outputUrl(url) {
  const key = apiKey();
  if (!url || !key || !url.startsWith("/outputs/")) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(key)}`;
}

function seconds(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return null;
  if (value < 1) return "under a second";
  const s = Math.round(value);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
}

function sentence(text) {
  const t = String(text || "").trim();
  if (!t) return "";
  return /[.!?)]$/.test(t) ? t : `${t}.`;
}

/** A readable sentence for an error: an ApiError, a NetworkError, or a job's {error, message}. */
function describeError(err) {
  if (!err) return "Something went wrong.";
  if (err instanceof NetworkError) {
    return "Cannot reach the server (network error). Check that it is running, then try again.";
  }
  const code = err.code || err.error;
  const message = err.serverMessage ?? err.message ?? "";
  switch (code) {
    case "unauthorized":
      return "This server needs an API key: enter it in the “API key” field above.";
    case "queue_full": {
      const wait = Number.parseInt(err.retryAfter, 10);
      return Number.isFinite(wait)
        ? `The queue is full. Try again in ${wait} seconds.`
        : "The queue is full. Try again in a little while.";
    }
    case "out_of_memory":
      return "The GPU ran out of memory for this image. Try a smaller size (768 × 768 or less) or fewer steps.";
    case "model_unavailable":
      return `The model is not available: ${sentence(message) || "it failed to load."}`;
    case "validation_error":
      return "Some settings need fixing: see the messages next to the fields.";
    case "body_too_large":
      return "The request is too large: shorten the prompts.";
    case "cancelled":
      return "The job was cancelled.";
    default:
      if (message) return sentence(message);
      if (err.status) return `The server answered ${err.status}${err.statusText ? ` ${err.statusText}` : ""}.`;
      return sentence(message) || "Something went wrong.";
  }
}

// ---------------------------------------------------------------------------- auth

function showAuth(message) {
  const wasHidden = el.auth.hidden;
  el.auth.hidden = false;
  el.authError.textContent = message || "";
  el.apiKey.setAttribute("aria-invalid", message ? "true" : "false");
  if (wasHidden && (document.activeElement === document.body || !document.activeElement)) el.apiKey.focus();
}

el.authForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = el.apiKey.value.trim();
  if (!key) {
    el.authError.textContent = "Enter the server's API key.";
    el.apiKey.setAttribute("aria-invalid", "true");
    el.apiKey.focus();
    return;
  }
  storageSet(localStorage, KEY_STORAGE, key);
  el.authError.textContent = "";
  el.apiKey.setAttribute("aria-invalid", "false");
  const ok = await loadInfo();
  if (!ok) return; // a 401 shows the panel again with "refused"
  el.auth.hidden = true;
  el.apiKey.value = "";
  setNote("API key saved in this browser.");
  loadGallery();
  if (state.job && !TERMINAL.has(state.job.status)) reconnect();
  else resumeJob();
  $("prompt").focus();
});

el.forgetKey.addEventListener("click", () => {
  storageSet(localStorage, KEY_STORAGE, null);
  el.apiKey.value = "";
  el.authError.textContent = "Key removed from this browser.";
});

// ---------------------------------------------------------------------------- model status

function setModelStatus(kind, text) {
  el.modelStatus.dataset.state = kind;
  el.modelStatus.textContent = text;
}

function modelName(model) {
  if (!model) return "unknown model";
  return model.tiny ? `${model.id} (tiny test model — random weights, images are noise)` : model.id;
}

async function refreshHealth() {
  clearTimeout(state.healthTimer);
  let body = null;
  try {
    const response = await fetch("/health", { cache: "no-store", headers: { Accept: "application/json" } });
    body = await response.json();
  } catch {
    setModelStatus("unreachable", "Server unreachable — retrying…");
    state.healthStatus = "unreachable";
    state.healthTimer = setTimeout(refreshHealth, 3000);
    return;
  }
  const model = body.model || {};
  const where = body.device ? ` on ${body.device}` : "";
  switch (body.status) {
    case "ok":
      setModelStatus(
        model.tiny ? "tiny" : "ok",
        model.state === "ready"
          ? `Model: ${modelName(model)} — ready${where}`
          : `Model: ${modelName(model)} — loads on the first request`,
      );
      break;
    case "loading":
      setModelStatus("loading", `Model: ${modelName(model)} — loading…`);
      break;
    case "error":
      setModelStatus("failed", `Model: ${modelName(model)} — failed: ${model.error || "unknown reason"}`);
      break;
    case "shutting_down":
      setModelStatus("loading", "The server is shutting down.");
      break;
    default:
      setModelStatus("unknown", `Server status: ${body.status}`);
  }
  const cameUp = body.status === "ok" && state.healthStatus !== "ok";
  state.healthStatus = body.status;
  if (cameUp && !state.info && !state.infoLoading) {
    if (await loadInfo()) {
      loadGallery();
      resumeJob();
    }
  }
  state.healthTimer = setTimeout(refreshHealth, body.status === "ok" ? 30000 : 2000);
}

// ---------------------------------------------------------------------------- the form

function fitPresets(limits) {
  const multiple = limits.size_multiple || 8;
  const seen = new Set();
  const presets = [];
  for (const [w, h, ratio] of PRESETS) {
    const scale = Math.min(1, limits.max_width / w, limits.max_height / h);
    const width = Math.floor((w * scale) / multiple) * multiple;
    const height = Math.floor((h * scale) / multiple) * multiple;
    if (width < limits.min_size || height < limits.min_size) continue;
    const value = `${width}x${height}`;
    if (seen.has(value)) continue;
    seen.add(value);
    const label = scale < 1
      ? `${width} × ${height} · ${ratio} (from ${w} × ${h})`
      : `${width} × ${height} · ${ratio}`;
    presets.push({ value, label });
  }
  return presets;
}

function setNumberLimits(input, min, max, step) {
  if (min !== undefined && min !== null) input.min = String(min);
  if (max !== undefined && max !== null) input.max = String(max);
  if (step !== undefined && step !== null) input.step = String(step);
}

function applyInfo(info) {
  const { limits, defaults } = info;
  setNumberLimits(form.width, limits.min_size, limits.max_width, limits.size_multiple);
  setNumberLimits(form.height, limits.min_size, limits.max_height, limits.size_multiple);
  setNumberLimits(form.steps, 1, limits.max_steps, 1);
  const [gmin, gmax] = limits.guidance_scale || [];
  setNumberLimits(form.guidance_scale, gmin, gmax, 0.1);
  setNumberLimits(form.seed, 0, limits.max_seed, 1);
  if (limits.max_prompt_length) {
    form.prompt.maxLength = limits.max_prompt_length;
    form.negative_prompt.maxLength = limits.max_prompt_length;
  }

  const selected = el.scheduler.value;
  el.scheduler.replaceChildren(
    ...Object.entries(info.schedulers || {}).map(([name, label]) => {
      const option = new Option(name === "default" ? `Default (${label})` : label, name);
      return option;
    }),
  );

  el.preset.replaceChildren(new Option("Custom", ""));
  for (const preset of fitPresets(limits)) el.preset.append(new Option(preset.label, preset.value));

  if (!form.dataset.filled) {
    form.width.value = defaults.width;
    form.height.value = defaults.height;
    form.steps.value = defaults.steps;
    form.guidance_scale.value = defaults.guidance_scale;
    el.scheduler.value = defaults.scheduler;
    form.dataset.filled = "defaults";
  } else if (selected) {
    el.scheduler.value = selected;
  }
  syncPreset();
}

async function loadInfo() {
  if (state.infoLoading) return state.infoLoading;
  state.infoLoading = (async () => {
    try {
      const { data } = await api("/api/v1/info");
      state.info = data;
      applyInfo(data);
      if (state.infoError) setError("");
      state.infoError = false;
      return true;
    } catch (err) {
      if (err.code !== "unauthorized") {
        setError(`Could not read the server's settings. ${describeError(err)}`);
        state.infoError = true;
      }
      return false;
    } finally {
      state.infoLoading = null;
    }
  })();
  return state.infoLoading;
}

function syncPreset() {
  const value = `${form.width.value}x${form.height.value}`;
  const match = [...el.preset.options].some((o) => o.value === value);
  el.preset.value = match ? value : "";
}

el.preset.addEventListener("change", () => {
  if (!el.preset.value) return;
  const [w, h] = el.preset.value.split("x");
  form.width.value = w;
  form.height.value = h;
  clearFieldError("width");
  clearFieldError("height");
});
form.width.addEventListener("input", syncPreset);
form.height.addEventListener("input", syncPreset);

function updateSeedUi() {
  el.reuseSeed.disabled = state.lastSeed === null;
  el.lastSeed.textContent = state.lastSeed === null ? "" : `Last seed: ${state.lastSeed}.`;
}

function rememberSeed(seed) {
  if (seed === null || seed === undefined) return;
  state.lastSeed = seed;
  storageSet(localStorage, LAST_SEED_STORAGE, seed);
  updateSeedUi();
}

el.reuseSeed.addEventListener("click", () => {
  if (state.lastSeed === null) return;
  el.seed.value = state.lastSeed;
  clearFieldError("seed");
});
el.randomSeed.addEventListener("click", () => {
  el.seed.value = "";
  clearFieldError("seed");
});

// Enter in a prompt generates (Shift+Enter: new line); Enter in an input submits natively.
for (const area of [form.prompt, form.negative_prompt]) {
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

function fieldInput(name) {
  return form.elements.namedItem(name);
}

function clearFieldError(name) {
  const input = fieldInput(name);
  const message = $(`${name}-error`);
  if (message) message.textContent = "";
  if (input) input.removeAttribute("aria-invalid");
}

function clearErrors() {
  for (const name of FIELDS) clearFieldError(name);
  setError("");
  setNote("");
}

function setError(text) {
  el.formMessage.textContent = text;
}

function setNote(text) {
  el.formNote.textContent = text;
}

/** Show the server's {name: [messages]} next to each field; return what had no field. */
function showFieldErrors(fields) {
  const unplaced = [];
  let first = null;
  for (const [name, messages] of Object.entries(fields || {})) {
    const text = (Array.isArray(messages) ? messages : [messages]).map(sentence).join(" ");
    const input = fieldInput(name);
    const slot = $(`${name}-error`);
    if (input && slot && FIELDS.includes(name)) {
      slot.textContent = text;
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    } else {
      unplaced.push(`${name === "_schema" ? "Request" : name}: ${text}`);
    }
  }
  if (first) first.focus();
  return unplaced;
}

function intValue(name, problems) {
  const input = fieldInput(name);
  if (input.validity && input.validity.badInput) {
    problems[name] = ["Enter a whole number."];
    return undefined;
  }
  const raw = input.value.trim();
  return raw === "" ? undefined : Number(raw);
}

/** The request body from the form, or null (with the local problems shown) if a field is not a number. */
function readForm() {
  const problems = {};
  const body = { prompt: form.prompt.value, negative_prompt: form.negative_prompt.value };
  for (const name of ["width", "height", "steps", "guidance_scale"]) {
    const value = intValue(name, problems);
    if (value !== undefined) body[name] = value;
  }
  const seed = intValue("seed", problems);
  body.seed = seed === undefined ? null : seed; // empty: the server draws one
  body.scheduler = el.scheduler.value || "default";
  if (Object.keys(problems).length) {
    showFieldErrors(problems);
    return null;
  }
  return body;
}

function restoreParams(params) {
  if (!params) return;
  clearErrors();
  form.prompt.value = params.prompt ?? "";
  form.negative_prompt.value = params.negative_prompt ?? "";
  for (const name of ["width", "height", "steps", "guidance_scale", "seed"]) {
    if (params[name] !== undefined && params[name] !== null) fieldInput(name).value = params[name];
  }
  if (params.scheduler && [...el.scheduler.options].some((o) => o.value === params.scheduler)) {
    el.scheduler.value = params.scheduler;
  }
  form.dataset.filled = "restored";
  syncPreset();
}

function setBusy(busy) {
  el.generate.disabled = busy;
  el.generate.setAttribute("aria-disabled", busy ? "true" : "false");
  el.cancel.disabled = !busy;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (state.job && !TERMINAL.has(state.job.status)) return; // one job at a time from this page
  clearErrors();
  const body = readForm();
  if (!body) {
    setError("Some settings need fixing: see the messages next to the fields.");
    return;
  }
  setBusy(true);
  el.cancel.disabled = true; // nothing to cancel until the server answers
  showJobPanel("Submitting…");
  revealOutput();
  try {
    const { data } = await api("/api/v1/jobs", { method: "POST", json: body });
    rememberSeed(data.params && data.params.seed);
    followJob(data);
  } catch (err) {
    setBusy(false);
    hideJobPanel();
    if (err.code === "validation_error") {
      const unplaced = showFieldErrors(err.fields);
      setError([describeError(err), ...unplaced].join(" "));
    } else {
      setError(describeError(err));
      if (err.code === "model_unavailable") refreshHealth();
    }
  }
});

el.cancel.addEventListener("click", async () => {
  const job = state.job;
  if (!job || TERMINAL.has(job.status)) return;
  el.cancel.disabled = true;
  el.jobStatus.textContent = "Cancelling…";
  try {
    const { data } = await api(`/api/v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
    if (data && data.status === "cancelled") {
      Object.assign(job, data);
      finishJob(job);
    } else {
      el.jobStatus.textContent = "Cancel requested: the job stops at its next step.";
    }
  } catch (err) {
    if (err.status === 409) {
      refreshJob(); // it finished first: show how it ended
    } else {
      if (state.job === job && !TERMINAL.has(job.status)) el.cancel.disabled = false;
      setError(`Could not cancel the job. ${describeError(err)}`);
    }
  }
});

// ---------------------------------------------------------------------------- following a job

function showJobPanel(text) {
  el.outputEmpty.hidden = true;
  el.result.hidden = true;
  el.job.hidden = false;
  el.jobStatus.textContent = text || "";
  el.connection.textContent = "";
  el.progressBlock.hidden = true;
  el.preview.hidden = true;
  el.preview.removeAttribute("src");
}

/** On a narrow screen the result is below the form: bring the job into view (focus stays put). */
function revealOutput() {
  const box = el.job.getBoundingClientRect();
  if (box.top >= 0 && box.bottom <= window.innerHeight) return;
  const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  el.job.scrollIntoView({ block: "nearest", behavior: smooth ? "smooth" : "auto" });
}

function hideJobPanel() {
  el.job.hidden = true;
  el.outputEmpty.hidden = !el.result.hidden;
}

function followJob(job) {
  closeSocket();
  state.job = { ...job };
  state.reconnectAttempts = 0;
  el.job.dataset.jobId = job.id;
  storageSet(sessionStorage, JOB_STORAGE, job.id);
  showJobPanel("");
  const { width, height } = job.params || {};
  if (width && height) {
    el.preview.width = width;
    el.preview.height = height;
  }
  renderJob();
  if (TERMINAL.has(job.status)) finishJob(state.job);
  else {
    setBusy(true);
    openSocket();
  }
}

function renderJob() {
  const job = state.job;
  if (!job) return;
  if (job.status === "queued") {
    const eta = seconds(job.eta_s);
    const where = job.position ? `position ${job.position} in the queue` : "in the queue";
    el.jobStatus.textContent = eta
      ? `Queued: ${where}; done in about ${eta}.`
      : `Queued: ${where} (no time estimate until this server has made an image).`;
    el.progressBlock.hidden = true;
  } else if (job.status === "running") {
    const total = job.total_steps || (job.params && job.params.steps) || 1;
    const step = job.step || 0;
    el.jobStatus.textContent = job.cancel_requested ? "Cancelling…" : "Generating…";
    el.progressBlock.hidden = false;
    el.progress.max = total;
    el.progress.value = step;
    const eta = seconds(job.eta_s);
    el.progress.setAttribute("aria-valuetext", `step ${step} of ${total}`);
    el.progressText.textContent = `step ${step}/${total}${eta ? ` · about ${eta} left` : step ? "" : " · starting…"}`;
  }
}

function socketUrl(jobId) {
  const params = new URLSearchParams({ job: jobId, preview: "1" });
  const key = apiKey();
  if (key) params.set("token", key);
  const protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return `${protocol}//${location.host}/api/v1/ws?${params}`;
}

function openSocket() {
  const job = state.job;
  let ws;
  try {
    ws = new WebSocket(socketUrl(job.id));
  } catch {
    scheduleReconnect(null);
    return;
  }
  state.ws = ws;
  ws.addEventListener("message", (message) => {
    if (state.ws !== ws) return;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    onEvent(event);
  });
  ws.addEventListener("close", (close) => {
    if (state.ws !== ws) return;
    state.ws = null;
    if (state.job && state.job.id === job.id && !TERMINAL.has(state.job.status)) scheduleReconnect(close.code);
  });
}

function closeSocket() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  const ws = state.ws;
  state.ws = null;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "done");
}

function scheduleReconnect(code) {
  clearTimeout(state.reconnectTimer);
  state.reconnectAttempts += 1;
  const delay = Math.min(RECONNECT_MAX_MS, 300 * 2 ** (state.reconnectAttempts - 1));
  const why = code === 1008 ? "the server dropped a slow connection" : "the connection was lost";
  el.connection.textContent = `Live updates paused (${why}); reconnecting…`;
  state.reconnectTimer = setTimeout(reconnect, delay);
}

/** Ask for the job (to learn whether it ended while we were away), then follow it again. */
async function reconnect() {
  const job = state.job;
  if (!job || TERMINAL.has(job.status)) return;
  try {
    const { data } = await api(`/api/v1/jobs/${encodeURIComponent(job.id)}`);
    if (state.job !== job) return;
    Object.assign(job, data);
    renderJob();
    if (TERMINAL.has(job.status)) finishJob(job);
    else openSocket();
  } catch (err) {
    if (state.job !== job) return;
    if (err.status === 404) {
      job.status = "failed";
      finishJob(job, "The server no longer knows this job (did it restart?). Generate it again.");
    } else if (err.code === "unauthorized") {
      el.connection.textContent = "Live updates paused: enter the API key to continue.";
    } else {
      scheduleReconnect(null);
    }
  }
}

async function refreshJob() {
  const job = state.job;
  if (!job) return;
  try {
    const { data } = await api(`/api/v1/jobs/${encodeURIComponent(job.id)}`);
    if (state.job !== job) return;
    Object.assign(job, data);
    if (TERMINAL.has(job.status)) finishJob(job);
    else renderJob();
  } catch { /* the websocket will tell */ }
}

function onEvent(event) {
  const job = state.job;
  if (!job || event.id !== job.id) return;
  switch (event.type) {
    case "snapshot":
      Object.assign(job, event.job);
      state.reconnectAttempts = 0;
      el.connection.textContent = "";
      if (TERMINAL.has(job.status)) finishJob(job);
      else renderJob();
      break;
    case "queued":
    case "position":
      Object.assign(job, { status: "queued", position: event.position, eta_s: event.eta_s });
      renderJob();
      break;
    case "started":
      Object.assign(job, { status: "running", position: 0, step: 0, total_steps: event.total_steps, eta_s: null });
      renderJob();
      break;
    case "progress":
      Object.assign(job, { status: "running", step: event.step, total_steps: event.total_steps, eta_s: event.eta_s });
      renderJob();
      break;
    case "preview":
      if (!TERMINAL.has(job.status) && typeof event.image === "string" && event.image.startsWith("data:image/")) {
        el.preview.src = event.image;
        el.preview.hidden = false;
      }
      break;
    case "completed":
      Object.assign(job, { status: "succeeded", image_url: event.image_url, meta_url: event.meta_url, meta: event.meta });
      finishJob(job);
      break;
    case "failed":
      Object.assign(job, { status: "failed", error: event.error });
      finishJob(job);
      break;
    case "cancelled":
      job.status = "cancelled";
      finishJob(job);
      break;
    case "suspended":
      // The server is restarting: the job stays queued and runs when it is back; the socket
      // closes next and the page reconnects to the job's snapshot.
      Object.assign(job, { status: "queued", position: null, eta_s: null });
      renderJob();
      el.connection.textContent = "The server is restarting: this job stays queued and runs when it is back.";
      break;
    default:
      break;
  }
}

function finishJob(job, message) {
  if (job.finishedOnPage || state.job !== job) return;
  job.finishedOnPage = true;
  closeSocket();
  storageSet(sessionStorage, JOB_STORAGE, null);
  setBusy(false);
  el.connection.textContent = "";
  el.progressBlock.hidden = true;
  el.preview.hidden = true;
  el.preview.removeAttribute("src");
  if (job.status === "succeeded") {
    const total = job.meta && job.meta.timings ? seconds(job.meta.timings.total_s) : null;
    el.jobStatus.textContent = total ? `Done in ${total}.` : "Done.";
    showResult(job);
    loadGallery();
  } else if (job.status === "cancelled") {
    el.result.hidden = true;
    el.jobStatus.textContent = "Cancelled: no image was made.";
  } else {
    el.result.hidden = true;
    const text = message || `Failed: ${describeError(job.error)}`;
    el.jobStatus.textContent = text;
    setError(text);
    if (job.error && job.error.error === "model_unavailable") refreshHealth();
  }
}

async function resumeJob() {
  const id = storageGet(sessionStorage, JOB_STORAGE);
  if (!id || state.job) return;
  try {
    const { data } = await api(`/api/v1/jobs/${encodeURIComponent(id)}`);
    if (!state.job && !TERMINAL.has(data.status)) followJob(data);
    else storageSet(sessionStorage, JOB_STORAGE, null);
  } catch (err) {
    if (err.code !== "unauthorized") storageSet(sessionStorage, JOB_STORAGE, null);
  }
}

// ---------------------------------------------------------------------------- result and gallery

function addParam(list, name, value) {
  if (value === undefined || value === null || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = String(value);
  list.append(dt, dd);
}

function showResult(job) {
  const params = { ...(job.params || {}), ...(job.meta || {}) };
  el.outputEmpty.hidden = true;
  el.result.hidden = false;
  el.resultImage.src = outputUrl(job.image_url);
  el.resultImage.alt = `Generated image: ${params.prompt || "untitled"}`;
  if (params.width && params.height) {
    el.resultImage.width = params.width;
    el.resultImage.height = params.height;
  }
  el.download.href = outputUrl(job.image_url);
  el.download.download = `sdxl-${params.seed ?? "image"}-${String(job.id).slice(0, 8)}.png`;
  el.metaLink.href = outputUrl(job.meta_url);
  const list = el.resultParams;
  list.replaceChildren();
  addParam(list, "Prompt", params.prompt);
  addParam(list, "Negative prompt", params.negative_prompt);
  addParam(list, "Size", params.width && `${params.width} × ${params.height}`);
  addParam(list, "Steps", params.steps);
  addParam(list, "Guidance", params.guidance_scale);
  addParam(list, "Seed", params.seed);
  const schedulerLabel = params.sampler_name
    || (state.info && state.info.schedulers && state.info.schedulers[params.scheduler])
    || params.scheduler;
  addParam(list, "Scheduler", schedulerLabel);
  addParam(list, "Model", params.model_id);
  if (params.timings) addParam(list, "Time", seconds(params.timings.total_s));
}

function galleryItem(job) {
  const params = job.params || {};
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "thumb";
  button.dataset.jobId = job.id;
  const img = document.createElement("img");
  img.src = outputUrl(job.image_url);
  img.alt = "";
  img.loading = "lazy";
  img.decoding = "async";
  if (params.width && params.height) {
    img.width = params.width;
    img.height = params.height;
  }
  const caption = document.createElement("span");
  caption.className = "thumb-caption";
  const prompt = document.createElement("span");
  prompt.className = "thumb-prompt";
  prompt.textContent = params.prompt || "untitled";
  const details = document.createElement("span");
  details.className = "thumb-details";
  details.textContent = `${params.width} × ${params.height} · seed ${params.seed}`;
  caption.append(prompt, details);
  const action = document.createElement("span");
  action.className = "visually-hidden";
  action.textContent = "Use the settings of: ";
  button.append(action, img, caption);
  button.addEventListener("click", () => {
    restoreParams(params);
    if (!state.job || TERMINAL.has(state.job.status)) {
      el.job.hidden = true;
      showResult(job);
    }
    setNote(`Loaded the settings of “${params.prompt}” (seed ${params.seed}) into the form.`);
  });
  li.append(button);
  return li;
}

async function loadGallery() {
  try {
    const { data } = await api(GALLERY_URL);
    const jobs = ((data && data.jobs) || []).filter((job) => job.image_url);
    el.gallery.replaceChildren(...jobs.map(galleryItem));
    el.galleryMessage.textContent = jobs.length ? "" : "No images yet.";
    if (state.lastSeed === null && jobs.length) rememberSeed(jobs[0].params && jobs[0].params.seed);
  } catch (err) {
    el.galleryMessage.textContent = err.code === "unauthorized"
      ? "Enter the API key to see recent images."
      : `Could not load recent images. ${describeError(err)}`;
  }
}

// ---------------------------------------------------------------------------- start

async function start() {
  updateSeedUi();
  setBusy(false);
  refreshHealth();
  if (await loadInfo()) {
    loadGallery();
    resumeJob();
  } else {
    el.galleryMessage.textContent = "Recent images appear once the server answers.";
  }
}

start();
