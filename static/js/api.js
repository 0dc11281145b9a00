// The HTTP client: fetch with the API key, JSON in and out, failures as exceptions that carry the
// server's error code, message and field errors.

import { local } from "./storage.js";

const KEY_STORAGE = "sdxl_server.apiKey";
const unauthorizedListeners = [];

export function apiKey() {
  return local.get(KEY_STORAGE) || "";
}

/** Keep the key in this browser (null or "" forgets it). */
export function setApiKey(key) {
  local.set(KEY_STORAGE, key);
}

/** Call listener({ hadKey }) whenever the server answers 401. */
export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

export class NetworkError extends Error {
  constructor() {
    super("network error");
    this.code = "network_error";
  }
}

export class ApiError extends Error {
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

/** fetch() without caching; the body parsed as JSON (null when empty or not JSON). Throws NetworkError. */
export async function fetchJson(path, init = {}) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store", ...init });
  } catch {
    throw new NetworkError();
  }
  let body = null;
  try {
    const text = await response.text();
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null; // not JSON (a proxy's error page): described by its status
  }
  return { response, body };
}

/** An API call with the key: JSON in and out; throws NetworkError or ApiError. */
export async function api(path, { method = "GET", json } = {}) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const { response, body } = await fetchJson(path, init);
  if (response.status === 401) {
    for (const listener of unauthorizedListeners) listener({ hadKey: Boolean(key) });
  }
  if (!response.ok) throw new ApiError(response, body);
  return { status: response.status, data: body, headers: response.headers };
}

/**
 * Output files need ?token= when the server protects them (OUTPUTS_NEED_KEY) and a key is set;
 * a signed URL (KEYS_FILE: ?expires=...&sig=...) carries its own right to the file, never the key.
 */
export function outputUrl(url) {
  const key = apiKey();
  if (!url || !key || !url.startsWith("/outputs/") || /[?&]sig=/.test(url)) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(key)}`;
}
