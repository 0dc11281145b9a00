// The websocket client for one job: connects with the API key, passes the job's events on, and
// reconnects with backoff when the connection drops.

import { apiKey } from "./api.js";

const PROTOCOL = "sdxl-server";
const TOKEN_PROTOCOL = "bearer."; // the key as a subprotocol: browsers cannot set headers on websockets
// A subprotocol must be an HTTP token (RFC 9110); a key with other characters goes in ?token=.
const HTTP_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const RECONNECT_FIRST_MS = 300;
const RECONNECT_MAX_MS = 5000;

/** The URL and subprotocols that follow a job; the key travels in the URL only when it must. */
export function socketAddress(jobId, key = apiKey()) {
  const params = new URLSearchParams({ job: jobId, preview: "1" });
  const protocols = [PROTOCOL];
  if (key && HTTP_TOKEN.test(key)) protocols.push(TOKEN_PROTOCOL + key);
  else if (key) params.set("token", key);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return { url: `${scheme}//${location.host}/api/v1/ws?${params}`, protocols };
}

/**
 * Follows one job. onEvent(event) gets its parsed events; onPaused(closeCode) says the connection
 * dropped and a reconnect is scheduled; before each reconnect, resync() is awaited: true opens the
 * socket again, false stops, a rejection retries later.
 */
export class JobSocket {
  constructor(jobId, { onEvent, onPaused, resync }) {
    Object.assign(this, { jobId, onEvent, onPaused, resync });
    this.ws = null;
    this.timer = null;
    this.attempts = 0;
    this.closed = false;
  }

  open() {
    if (this.closed) return;
    this.drop();
    const { url, protocols } = socketAddress(this.jobId);
    let ws;
    try {
      ws = new WebSocket(url, protocols);
    } catch {
      this.retryLater(null);
      return;
    }
    this.ws = ws;
    ws.addEventListener("message", (message) => {
      if (this.ws === ws) this.receive(message.data);
    });
    ws.addEventListener("close", (close) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.retryLater(close.code);
    });
  }

  receive(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    if (!event || event.id !== this.jobId) return;
    if (event.type === "snapshot") this.attempts = 0; // connected again
    this.onEvent(event);
  }

  retryLater(code) {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.attempts += 1;
    const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** (this.attempts - 1));
    this.onPaused(code);
    this.timer = setTimeout(() => this.reconnect(), delay);
  }

  /** Resync (the job may have ended meanwhile), then connect again. */
  async reconnect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.closed) return;
    let again;
    try {
      again = await this.resync();
    } catch {
      this.retryLater(null);
      return;
    }
    if (again) this.open();
  }

  drop() {
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "done");
  }

  /** Stop for good: no more events, no reconnects. */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = null;
    this.drop();
  }
}
