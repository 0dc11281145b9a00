// The API key panel: shown when the server answers 401, the key saved in this browser or forgotten.

import { setApiKey } from "./api.js";
import { $ } from "./dom.js";

const panel = $("auth");
const keyForm = $("auth-form");
const keyInput = $("api-key");
const message = $("auth-error");
const forget = $("forget-key");

function setMessage(text, invalid) {
  message.textContent = text;
  keyInput.setAttribute("aria-invalid", invalid ? "true" : "false");
}

/** Show the panel; refused: the key that was sent did not open the API. */
export function askForKey(refused) {
  const wasHidden = panel.hidden;
  panel.hidden = false;
  setMessage(refused ? "The server refused this key. Check it and try again." : "", refused);
  if (wasHidden && (document.activeElement === document.body || !document.activeElement)) keyInput.focus();
}

/**
 * Wire the panel (onForgotten() runs when the key is removed from this browser). verify() runs with the new key saved and resolves true when the server took it
 * (a refusal shows the panel again through askForKey); then the panel hides and onSaved() runs.
 */
export function initAuth({ verify, onSaved, onForgotten = () => {} }) {
  keyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (!key) {
      setMessage("Enter the server's API key.", true);
      keyInput.focus();
      return;
    }
    setApiKey(key);
    setMessage("", false);
    if (!(await verify())) return;
    panel.hidden = true;
    keyInput.value = "";
    onSaved();
  });
  forget.addEventListener("click", () => {
    setApiKey(null);
    keyInput.value = "";
    message.textContent = "Key removed from this browser.";
    onForgotten(); // what the page showed was that key's: its jobs and images go with it
  });
}
