"""The web page in a real Chromium (Playwright), against a real server on a loopback port.

Needs Debian's chromium (``/usr/bin/chromium``, or ``CHROMIUM_PATH``) and the ``playwright``
package; no ``playwright install`` (no download). Skipped with the reason when either is missing.
A screenshot of the finished page is saved to ``test-artifacts/web-page.png`` for review.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from live_server import LiveServer, stop_all

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (pip install playwright)")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FIELD_LABELS = ["Prompt", "Negative prompt", "Width", "Height", "Steps", "Guidance", "Seed", "Sampler", "Schedule type"]
SHORT = 10_000  # ms: the page's own reactions
LONG = 60_000  # ms: a generation on a slow CI CPU

expect.set_options(timeout=SHORT)


# On top of LiveServer's tiny-model defaults.
SERVER_SETTINGS = {"DEFAULT_STEPS": "4", "MAX_WIDTH": "512", "MAX_HEIGHT": "512", "REFINER_ID": "tiny"}


API_KEY = "s3cret-key"


def server_has_api_keys() -> bool:
    from sdxl_server.config import Settings

    return "api_key" in Settings.__dataclass_fields__


USER_KEYS = {"alice": "sdxl-alice-browser-key", "bob": "sdxl-bob-browser-key"}


def server_has_keys_file() -> bool:
    from sdxl_server.config import Settings

    return "keys_file" in Settings.__dataclass_fields__


def _hash(key: str) -> str:
    from sdxl_server.api.key_file import hash_text

    return hash_text(key)

TINY_B_PRESET = {"steps": 2, "guidance_scale": 1.0, "sampler": "euler", "schedule": "sgm_uniform"}


def _models_and_loras(root: Path, tiny_model_dir: Path) -> dict[str, str]:
    """A second tiny model, a LoRA, two ControlNets and a Union one, and an IP-Adapter, for the pickers."""
    from lora_builder import lora_weights, save_diffusers_layout

    from sdxl_server.pipeline.tiny import (
        build_tiny_pipeline, ensure_tiny_controlnet, ensure_tiny_union_controlnet, write_tiny_ip_adapter,
    )

    ensure_tiny_controlnet(root / "controlnet" / "tiny-canny")
    ensure_tiny_controlnet(root / "controlnet" / "tiny-lineart", seed=5)
    ensure_tiny_union_controlnet(root / "controlnet" / "tiny-union")
    write_tiny_ip_adapter(root / "ip-adapters")
    build_tiny_pipeline(seed=1).save_pretrained(root / "models" / "tiny-b")
    (root / "loras").mkdir(parents=True)
    save_diffusers_layout(lora_weights(tiny_model_dir, seed=1), root / "loras" / "ink.safetensors")
    (root / "models" / "tiny-b.preset.json").write_text(json.dumps(TINY_B_PRESET))
    (root / "loras" / "ink.json").write_text(json.dumps({"activation text": "inked lines", "preferred weight": 0.7,
                                                         "sd version": "SDXL", "sampler": "lcm"}))
    (root / "styles.csv").write_text('name,prompt,negative_prompt\nFilm,"{prompt}, 35mm film",grainless\nDusk,at dusk,\n')
    return {"MODELS_DIR": str(root / "models"), "LORA_DIR": str(root / "loras"), "STYLES_FILE": str(root / "styles.csv"),
            "CONTROLNET_DIR": str(root / "controlnet"), "IP_ADAPTER_DIR": str(root / "ip-adapters")}


@pytest.fixture(scope="module")
def servers(tiny_cache, tiny_model_dir, tmp_path_factory):
    """The module's servers, started side by side (each takes seconds to import torch and load)."""
    root = tmp_path_factory.mktemp("browser-servers")
    procs: dict[str, LiveServer] = {}
    try:
        procs["open"] = LiveServer(tiny_cache, root / "open", **SERVER_SETTINGS)
        if server_has_api_keys():
            procs["keyed"] = LiveServer(
                tiny_cache, root / "keyed", **SERVER_SETTINGS, API_KEY=API_KEY, OUTPUTS_NEED_KEY="true"
            )
        if server_has_keys_file():
            keys_file = root / "keys.toml"
            keys_file.write_text("".join(f'[keys.{name}]\nhash = "{_hash(key)}"\n' for name, key in USER_KEYS.items()))
            procs["multi"] = LiveServer(tiny_cache, root / "multi", **SERVER_SETTINGS, KEYS_FILE=str(keys_file))
        procs["choices"] = LiveServer(
            tiny_cache, root / "choices", **SERVER_SETTINGS, **_models_and_loras(root / "choices-files", tiny_model_dir)
        )
        yield procs
    finally:
        stop_all(procs.values())
    for name, proc in procs.items():
        assert "Traceback" not in proc.log_text(), f"the {name} server logged an error:\n{proc.log_tail()}"


@pytest.fixture(scope="module")
def server(servers) -> LiveServer:
    servers["open"].wait_ready()
    return servers["open"]


@pytest.fixture(scope="module")
def keyed_server(servers) -> LiveServer:
    if "keyed" not in servers:
        pytest.skip("this server has no API_KEY setting")
    servers["keyed"].wait_ready()
    return servers["keyed"]


@pytest.fixture(scope="module")
def multi_user_server(servers) -> LiveServer:
    if "multi" not in servers:
        pytest.skip("this server has no KEYS_FILE setting")
    return servers["multi"].wait_ready()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(servers, browser, server):  # this order launches Chromium while the servers start
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_page(page) -> None:
    """Load the page and wait until the form is built from /api/v1/info."""
    page.goto("/")
    wait_for_form(page)


def wait_for_form(page) -> None:
    expect(page.locator("#sampler option")).not_to_have_count(1)
    expect(page.get_by_label("Width", exact=True)).not_to_have_value("")


def fill_form(page, *, prompt: str, width: int, height: int, steps: int, seed: int | None = None) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Width", exact=True).fill(str(width))
    page.get_by_label("Height", exact=True).fill(str(height))
    page.get_by_label("Steps", exact=True).fill(str(steps))
    page.get_by_label("Seed", exact=True).fill("" if seed is None else str(seed))


# Records what the page showed, however briefly (a poll could miss it).
RECORD_PROGRESS = """() => {
  window.__seen = {progress: [], connection: [], previews: 0};
  for (const [id, list] of [['progress-text', 'progress'], ['connection', 'connection']]) {
    new MutationObserver((records) => {
      for (const r of records) for (const n of r.addedNodes) window.__seen[list].push(n.textContent);
    }).observe(document.getElementById(id), {childList: true});
  }
  new MutationObserver(() => {
    if ((document.getElementById('preview').getAttribute('src') || '').startsWith('data:image/')) window.__seen.previews++;
  }).observe(document.getElementById('preview'), {attributes: true, attributeFilter: ['src']});
}"""


def test_generate_shows_progress_preview_and_the_image(page, server):
    open_page(page)
    expect(page.locator("#model-status")).to_contain_text("tiny test model — random weights, images are noise")
    width = page.get_by_label("Width", exact=True)
    assert width.get_attribute("max") == "512" and width.get_attribute("step") == "8"  # from /api/v1/info
    assert page.get_by_label("Steps", exact=True).get_attribute("max") == "50"

    fill_form(page, prompt="a lighthouse at dusk", width=256, height=192, steps=12, seed=1234)
    page.get_by_label("Negative prompt", exact=True).fill("blurry")
    page.evaluate(RECORD_PROGRESS)
    page.get_by_role("button", name="Generate", exact=True).click()

    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    image = page.locator("#result-image")
    expect(image).to_be_visible()
    page.wait_for_function("() => document.getElementById('result-image').naturalWidth === 256")

    seen = page.evaluate("window.__seen")
    steps = [int(m.group(1)) for text in seen["progress"] if (m := re.match(r"step (\d+)/12\b", text))]
    assert len(set(steps)) >= 2 and steps == sorted(steps), seen["progress"]
    assert seen["previews"] >= 1, "no live preview was shown"

    params = page.locator("#result-params")
    for text in ("a lighthouse at dusk", "blurry", "256 × 192", "1234"):
        expect(params).to_contain_text(text)
    download, meta = page.get_by_role("link", name="Download PNG"), page.get_by_role("link", name="Metadata (JSON)")
    assert download.get_attribute("download")
    response = page.request.get(download.get_attribute("href"))
    assert response.status == 200 and response.headers["content-type"] == "image/png"
    response = page.request.get(meta.get_attribute("href"))
    assert response.status == 200
    assert response.json()["seed"] == 1234 and response.json()["prompt"] == "a lighthouse at dusk"
    expect(page.get_by_role("button", name="Reuse last seed")).to_be_enabled()
    expect(page.locator("#gallery button").first).to_contain_text("a lighthouse at dusk")


def test_cancel_stops_the_running_job(page, server):
    status, blocker = server.request(
        "POST", "/api/v1/jobs", {"prompt": "someone else's job", "width": 512, "height": 512, "steps": 50}
    )
    assert status == 202, blocker
    open_page(page)
    fill_form(page, prompt="a long one to cancel", width=512, height=512, steps=50)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text(re.compile(r"Queued: position 1 in the queue; done in about \d+"))
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_enabled()
    assert server.request("DELETE", f"/api/v1/jobs/{blocker['id']}")[0] in (200, 202)  # ours moves up and runs

    expect(page.locator("#progress-text")).to_contain_text(re.compile(r"step [1-9]\d*/50"), timeout=LONG)
    job_id = page.locator("#job").get_attribute("data-job-id")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-progress.png"), full_page=True)  # for a reviewer: a job under way

    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Cancelled")
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#preview")).to_be_hidden()
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_disabled()
    status, job = server.get_json(f"/api/v1/jobs/{job_id}")
    assert status == 200 and job["status"] == "cancelled"


def test_validation_errors_show_next_to_their_field(page, server):
    open_page(page)
    page.get_by_label("Prompt", exact=True).fill("a size the server refuses")
    width = page.get_by_label("Width", exact=True)
    width.fill("100")
    width.press("Enter")  # Enter in a field submits

    expect(page.locator("#width-error")).to_contain_text("Must be a multiple of 8 (got 100; try 96)")
    expect(width).to_have_attribute("aria-invalid", "true")
    expect(width).to_have_accessible_description(re.compile("multiple of 8"))
    expect(width).to_be_focused()
    expect(page.get_by_role("alert")).to_contain_text("see the messages next to the fields")
    expect(page.get_by_label("Height", exact=True)).not_to_have_attribute("aria-invalid", "true")

    width.fill("96")  # fixed: the next submission clears the error
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    expect(page.locator("#width-error")).to_be_empty()
    expect(width).not_to_have_attribute("aria-invalid", "true")


def make_image(server, **params) -> dict:
    status, made = server.request("POST", "/api/v1/generate", {"width": 64, "height": 64, "steps": 2, **params})
    assert status == 200, made
    return made


def test_gallery_survives_a_reload_and_restores_settings(page, server):
    make_image(server, prompt="gallery: an earlier one")
    made = make_image(server, prompt="gallery: a red fox", width=128, height=96, steps=3, seed=4242,
                      guidance_scale=5.5, scheduler="dpmpp_2m_karras", negative_prompt="fog")

    open_page(page)
    page.reload()
    wait_for_form(page)
    item = page.get_by_role("button", name=re.compile("gallery: a red fox"))
    expect(item).to_have_count(1)
    expect(page.get_by_role("button", name=re.compile("gallery: an earlier one"))).to_have_count(1)
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].some(i => i.naturalWidth === 128)")

    item.focus()
    page.keyboard.press("Enter")  # keyboard-usable
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("gallery: a red fox")
    expect(page.get_by_label("Negative prompt", exact=True)).to_have_value("fog")
    expect(page.get_by_label("Width", exact=True)).to_have_value("128")
    expect(page.get_by_label("Height", exact=True)).to_have_value("96")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("3")
    expect(page.get_by_label("Guidance", exact=True)).to_have_value("5.5")
    expect(page.get_by_label("Seed", exact=True)).to_have_value("4242")
    expect(page.get_by_label("Sampler", exact=True)).to_have_value("dpmpp_2m")  # the older field's name, split
    expect(page.get_by_label("Schedule type", exact=True)).to_have_value("karras")
    expect(page.locator("#result-image")).to_have_attribute("src", made["image_url"])


def test_phone_sized_screen_has_no_horizontal_scroll_and_labelled_controls(browser, server):
    make_image(server, prompt="a phone-sized check with a long prompt " * 3)
    context = browser.new_context(base_url=server.url, viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        open_page(page)
        page.locator("#gallery button").first.click()  # a result and the gallery on screen too
        expect(page.locator("#result-image")).to_be_visible()
        for label in FIELD_LABELS:
            expect(page.get_by_label(label, exact=True)).to_be_visible()
        for name in ("Generate", "Cancel", "Reuse last seed"):
            expect(page.get_by_role("button", name=name, exact=True)).to_have_count(1)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
        layout = page.evaluate(
            "() => [document.getElementById('generate-form'), document.getElementById('output')]"
            ".map(e => e.getBoundingClientRect()).map(r => [r.left, r.top])"
        )
        assert layout[0][0] == layout[1][0] and layout[1][1] > layout[0][1], "not a single column"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page-phone.png"), full_page=True)
    finally:
        context.close()


def test_screenshot_of_the_finished_page(page, server):
    open_page(page)
    fill_form(page, prompt="a lighthouse at dusk, oil painting", width=384, height=288, steps=4, seed=7)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    page.wait_for_function("() => document.getElementById('result-image').naturalWidth > 0")
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "web-page.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def test_api_key_is_asked_for_stored_and_sent(browser, keyed_server):
    context = browser.new_context(base_url=keyed_server.url)
    try:
        page = context.new_page()
        sockets: list[dict] = []

        def on_socket(ws) -> None:
            record = {"url": ws.url, "frames": []}
            sockets.append(record)
            ws.on("framereceived", lambda payload: record["frames"].append(payload))

        page.on("websocket", on_socket)
        page.goto("/")
        key = page.get_by_label("API key", exact=True)
        expect(key).to_be_visible()
        expect(key).to_have_attribute("type", "password")
        expect(page.locator("#model-status")).to_contain_text("tiny test model")  # /health stays public

        key.fill("wrong")
        key.press("Enter")
        expect(page.locator("#auth-error")).to_contain_text("refused")
        key.fill(API_KEY)
        page.get_by_role("button", name="Save key").click()
        expect(key).to_be_hidden()
        expect(page.get_by_label("Width", exact=True)).to_have_value("64")  # /api/v1/info with the key
        assert page.evaluate("localStorage.getItem('sdxl_server.apiKey')") == API_KEY

        fill_form(page, prompt="behind a key", width=64, height=64, steps=4)
        page.evaluate(RECORD_PROGRESS)
        page.get_by_role("button", name="Generate", exact=True).click()  # POST with the header
        expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
        page.wait_for_function("() => document.getElementById('result-image').naturalWidth === 64")  # ?token=
        # The websocket carries the key as its "bearer.KEY" subprotocol, never in its URL...
        assert sockets and all("token" not in record["url"] and API_KEY not in record["url"] for record in sockets)
        # ...and the server took it: the snapshot, the progress, and the page showed the steps.
        assert any('"type":"snapshot"' in frame for frame in sockets[0]["frames"]), sockets
        assert any('"type":"progress"' in frame for frame in sockets[0]["frames"]), sockets
        assert any(re.match(r"step [1-4]/4\b", text) for text in page.evaluate("window.__seen.progress"))

        page.reload()  # the key was kept: no prompt, the gallery loads
        expect(page.get_by_role("button", name=re.compile("behind a key"))).to_have_count(1)
        expect(key).to_be_hidden()
    finally:
        context.close()


def test_with_keys_the_page_asks_for_one_and_shows_only_that_keys_jobs(browser, multi_user_server):
    server = multi_user_server
    status, _ = server.request("POST", "/api/v1/generate", {"prompt": "bob's private image", "steps": 2},
                               headers={"Authorization": f"Bearer {USER_KEYS['bob']}"})
    assert status == 200
    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        page.goto("/")
        key = page.get_by_label("API key", exact=True)
        expect(key).to_be_visible()  # the server needs a key: the page asks before showing anything
        key.fill(USER_KEYS["alice"])
        page.get_by_role("button", name="Save key").click()
        expect(key).to_be_hidden()
        fill_form(page, prompt="alice's own image", width=64, height=64, steps=2)
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
        page.wait_for_function("() => document.getElementById('result-image').naturalWidth === 64")
        src = page.get_attribute("#result-image", "src")
        assert "sig=" in src and USER_KEYS["alice"] not in src  # a signed URL, never the key
        page.reload()
        expect(page.get_by_role("button", name=re.compile("alice's own image"))).to_have_count(1)
        expect(page.get_by_role("button", name=re.compile("bob's private image"))).to_have_count(0)
        page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every((img) => img.naturalWidth === 64)")
    finally:
        context.close()


SOCKET_ADDRESS = """async (keys) => {
  const { socketAddress } = await import('/static/js/socket.js');
  return keys.map((key) => socketAddress('job-1', key));
}"""


def test_the_websocket_key_goes_in_the_url_only_when_it_cannot_be_a_subprotocol(page, server):
    """A subprotocol must be an HTTP token: other keys (base64's '/', '=', spaces, non-ASCII) use ?token=."""
    open_page(page)
    plain, symbols, base64, spaced, accented, none = page.evaluate(
        SOCKET_ADDRESS, ["s3cret-key", "a!#$%&'*+-.^_`|~Z9", "ab/cd+ef==", "two words", "clé", ""]
    )
    for address, key in ((plain, "s3cret-key"), (symbols, "a!#$%&'*+-.^_`|~Z9")):
        assert address["protocols"] == ["sdxl-server", f"bearer.{key}"] and "token" not in address["url"], address
    assert base64["protocols"] == ["sdxl-server"] and base64["url"].endswith("&token=ab%2Fcd%2Bef%3D%3D"), base64
    assert spaced["protocols"] == ["sdxl-server"] and "token=two+words" in spaced["url"], spaced
    assert accented["protocols"] == ["sdxl-server"] and "token=cl%C3%A9" in accented["url"], accented
    assert none == {"protocols": ["sdxl-server"], "url": f"{server.url.replace('http', 'ws')}/api/v1/ws?job=job-1&preview=1"}


def test_the_page_takes_the_final_statuses_from_the_server(page, server):
    open_page(page)
    final = page.evaluate("""async () => {
      const { isTerminal } = await import('/static/js/info.js');
      return ['queued', 'running', 'succeeded', 'failed', 'cancelled'].filter(isTerminal);
    }""")
    status, info = server.get_json("/api/v1/info")
    assert status == 200 and final == info["terminal_statuses"] == ["succeeded", "failed", "cancelled"]


def test_a_reload_resumes_following_the_job(page, server):
    open_page(page)
    fill_form(page, prompt="followed across a reload", width=512, height=512, steps=50)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#progress-text")).to_contain_text(re.compile(r"step [1-9]\d*/50"), timeout=LONG)
    job_id = page.locator("#job").get_attribute("data-job-id")

    page.reload()
    expect(page.locator("#job")).to_have_attribute("data-job-id", job_id)  # this tab's job, from sessionStorage
    expect(page.locator("#progress-text")).to_contain_text(re.compile(r"step [1-9]\d*/50"), timeout=LONG)
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_disabled()
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Cancelled")
    assert server.get_json(f"/api/v1/jobs/{job_id}")[1]["status"] == "cancelled"
    page.reload()  # an ended job is not resumed
    wait_for_form(page)
    expect(page.locator("#job")).to_be_hidden()
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled()


def test_a_dropped_websocket_reconnects_and_resumes(page, server):
    """The server closes a slow client with 1008; the page reconnects and picks up from the snapshot."""
    connections: list[str] = []

    def route(ws) -> None:
        connections.append(ws.url)
        upstream = ws.connect_to_server()
        if len(connections) > 1:
            return  # later connections pass through untouched

        def from_server(message) -> None:
            ws.send(message)
            # The first progress event this connection sees (a busy machine may connect after step 3).
            if '"type":"progress"' in str(message):
                ws.close(code=1008, reason="too slow: events were not read in time")
                upstream.close()

        upstream.on_message(from_server)

    page.route_web_socket(re.compile(r"/api/v1/ws"), route)
    open_page(page)
    fill_form(page, prompt="dropped and resumed", width=256, height=256, steps=24)
    page.evaluate(RECORD_PROGRESS)
    page.get_by_label("Prompt", exact=True).press("Enter")  # Enter in the prompt generates
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    assert any("reconnecting" in text for text in page.evaluate("window.__seen.connection"))
    page.wait_for_function("() => document.getElementById('result-image').naturalWidth === 256")
    assert len(connections) == 2, connections
    expect(page.locator("#connection")).to_be_empty()


HEALTH = {
    "loading": (
        {"status": "loading", "model": {"id": "stabilityai/stable-diffusion-xl-base-1.0", "tiny": False, "state": "loading"}},
        "Model: stabilityai/stable-diffusion-xl-base-1.0 — loading",
    ),
    "failed": (
        {"status": "error", "model": {"id": "/models/sdxl", "tiny": False, "state": "failed",
                                      "error": "no model at /models/sdxl: set MODEL_ID"}},
        "Model: /models/sdxl — failed: no model at /models/sdxl: set MODEL_ID",
    ),
}


@pytest.mark.parametrize("case", HEALTH, ids=list(HEALTH))
def test_model_loading_and_failed_states_are_shown(page, server, case):
    body, text = HEALTH[case]
    page.route("**/health", lambda route: route.fulfill(status=503, json=body))
    page.goto("/")
    expect(page.locator("#model-status")).to_have_text(re.compile(re.escape(text)))


ERRORS = {
    "queue full": (
        {"status": 429, "headers": {"Retry-After": "12"},
         "json": {"error": "queue_full", "message": "8 jobs are already waiting"}},
        "The queue is full. Try again in 12 seconds.",
    ),
    "model unavailable": (
        {"status": 503, "json": {"error": "model_unavailable", "message": "the model failed to load: no network"}},
        "The model is not available: the model failed to load: no network.",
    ),
    "out of memory": (
        {"status": 503, "json": {"error": "out_of_memory", "message": "CUDA out of memory"}},
        "Try a smaller size",
    ),
    "not JSON": ({"status": 502, "body": "<html>Bad gateway</html>", "content_type": "text/html"}, "The server answered 502"),
    "network": (None, "Cannot reach the server (network error)"),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_other_errors_are_readable_messages(page, server, case):
    reply, message = ERRORS[case]

    def route(request_route) -> None:
        if request_route.request.method != "POST":
            request_route.continue_()
        elif reply is None:
            request_route.abort("internetdisconnected")
        else:
            request_route.fulfill(**reply)

    page.route("**/api/v1/jobs", route)
    open_page(page)
    page.get_by_label("Prompt", exact=True).fill("anything")
    page.get_by_role("button", name="Generate", exact=True).click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(message)
    assert "{" not in alert.inner_text()  # never raw JSON
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled()


@pytest.fixture
def choices_page(servers, browser):
    """The page of the server with two models, a LoRA and a styles file."""
    live = servers["choices"].wait_ready()
    context = browser.new_context(base_url=live.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_model_and_lora_pickers_and_the_token_counter(choices_page):
    page = choices_page
    open_page(page)
    model = page.get_by_label("Model", exact=True)
    expect(model.locator("option")).to_have_count(2)
    expect(model.locator("option").first).to_contain_text("tiny (default) · loaded on cpu")
    expect(model.locator("option").nth(1)).to_contain_text("tiny-b · not loaded")

    long_prompt = " ".join(["abcde"] * 20)  # the tiny tokenizer: 100 tokens
    fill_form(page, prompt=long_prompt + " (sea:1.2)", width=64, height=64, steps=2, seed=9)
    expect(page.locator("#prompt-tokens")).to_have_text("103 tokens · 2 chunks of 75: 75 | 28")

    model.select_option("tiny-b")
    page.get_by_label("LoRAs", exact=True).select_option("ink")
    weight = page.get_by_label("ink", exact=True)
    weight.fill("0.6")
    expect(page.locator(".lora-weight")).to_have_text("0.60")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)

    meta = page.request.get(page.get_by_role("link", name="Metadata (JSON)").get_attribute("href")).json()
    assert meta["model_id"].endswith("tiny-b")
    assert meta["loras"] == [{"name": "ink", "weight": 0.6}]
    assert meta["prompt"] == long_prompt + " (sea:1.2)"  # the LoRA is not in the prompt text
    page.reload()
    wait_for_form(page)
    expect(model.locator("option").nth(1)).to_contain_text("tiny-b · loaded on cpu")


def test_sampler_schedule_pickers_and_presets(choices_page):
    page = choices_page
    open_page(page)
    sampler, schedule = page.get_by_label("Sampler", exact=True), page.get_by_label("Schedule type", exact=True)
    sampler.select_option("euler")
    expect(schedule.locator("option")).to_have_count(7)
    schedule.select_option("karras")
    sampler.select_option("lcm")  # LCM runs its own schedule only
    expect(schedule.locator("option")).to_have_count(1)
    expect(schedule).to_have_value("automatic")

    page.get_by_label("Model", exact=True).select_option("tiny-b")  # its preset fills the form, and is named
    expect(page.locator("#model-preset")).to_have_text("Recommended: 2 steps, guidance 1, Euler, SGM Uniform")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("2")
    expect(page.get_by_label("Guidance", exact=True)).to_have_value("1")
    expect(sampler).to_have_value("euler")
    expect(schedule).to_have_value("sgm_uniform")

    page.get_by_label("LoRAs", exact=True).select_option("ink")  # A1111's card: its weight, words and preset
    expect(page.locator(".lora-weight")).to_have_text("0.70")
    expect(page.locator(".lora-row")).to_contain_text("activation text: inked lines")
    expect(sampler).to_have_value("lcm")
    expect(schedule).to_have_value("automatic")
    page.get_by_label("Prompt", exact=True).fill("presets")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    meta = page.request.get(page.get_by_role("link", name="Metadata (JSON)").get_attribute("href")).json()
    assert (meta["sampler"], meta["schedule"], meta["steps"], meta["sampler_name"]) == ("lcm", "automatic", 2, "LCM")
    expect(page.locator("#result-params")).to_contain_text("LCM")


def test_image_to_image_with_a_painted_mask_changes_only_the_masked_region(page, server, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    x = np.linspace(0, 255, 128, dtype=np.uint8)[None, :].repeat(128, 0)
    source = Image.fromarray(np.stack([x, x.T, np.full_like(x, 80)], axis=-1))
    path = tmp_path / "input.png"
    source.save(path)

    open_page(page)
    page.get_by_label("Prompt", exact=True).fill("a red door")
    page.locator("#init-file").set_input_files(str(path))
    canvas = page.get_by_label("Mask: paint the area to repaint")
    expect(canvas).to_be_visible()
    expect(page.get_by_label("Width", exact=True)).to_have_value("128")  # the output takes the input's size
    page.get_by_label("Brush").fill("32")
    box = canvas.bounding_box()
    for fraction in (0.75, 0.9):  # two strokes down the right side: x from 0.625 to 1.0 of the width
        page.mouse.move(box["x"] + box["width"] * fraction, box["y"] + 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * fraction, box["y"] + box["height"] - 2, steps=12)
        page.mouse.up()
    page.get_by_label("Strength").fill("1")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    expect(page.locator("#result-params")).to_contain_text("inpainting")

    response = page.request.get(page.get_by_role("link", name="Download PNG").get_attribute("href"))
    out = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB")).astype(int)
    original = np.asarray(source).astype(int)
    assert out.shape == original.shape
    keep = slice(0, 128 * 5 // 8 - 16 - 12)  # left of the strokes, their brush radius and the mask blur
    assert (out[:, keep] == original[:, keep]).all()  # only the masked region changed
    assert np.abs(out[:, 100:] - original[:, 100:]).mean() > 1  # and it did change

    page.get_by_role("button", name="Use as input").click()  # the result becomes the next input
    expect(page.locator("#init-preview")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))


def test_the_refiner_choice_runs_the_refiner(page, server):
    open_page(page)
    fill_form(page, prompt="a harbour", width=64, height=64, steps=10)
    switch = page.get_by_label("Switch at", exact=True)
    expect(switch).to_be_disabled()
    page.get_by_label("Refiner", exact=True).select_option("ensemble")
    expect(switch).to_be_enabled()
    switch.fill("0.7")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    expect(page.locator("#result-params")).to_contain_text("ensemble")
    meta = page.request.get(page.get_by_role("link", name="Metadata (JSON)").get_attribute("href")).json()
    assert (meta["refiner"], meta["refiner_switch_at"], meta["refiner_id"]) == ("ensemble", 0.7, "tiny")


def test_the_styles_picker_styles_the_prompt(choices_page):
    page = choices_page
    open_page(page)
    styles = page.get_by_label("Styles", exact=True)
    expect(styles.locator("option")).to_have_count(2)
    expect(page.locator("#styles-hint")).to_contain_text("in this order")
    fill_form(page, prompt="a lighthouse", width=64, height=64, steps=2, seed=3)
    styles.select_option(["Film", "Dusk"])
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    meta = page.request.get(page.get_by_role("link", name="Metadata (JSON)").get_attribute("href")).json()
    assert meta["prompt"] == "a lighthouse, 35mm film, at dusk" and meta["negative_prompt"] == "grainless"
    assert meta["styles"] == ["Film", "Dusk"]


def _square_png(path: Path, shade: int) -> str:
    """A 64x64 PNG of a lit square (edges to find) at ``path``; returns it as base64."""
    import base64

    import numpy as np
    from PIL import Image

    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[16:48, 12:40] = shade
    Image.fromarray(pixels).save(path)
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _jobs_request(request) -> bool:
    return request.method == "POST" and request.url.endswith("/api/v1/jobs")


def test_controlnet_units_previewed_and_an_ip_adapter_guide_the_image(choices_page, tmp_path):
    edges = _square_png(tmp_path / "edges.png", 230)
    _square_png(tmp_path / "lines.png", 90)
    page = choices_page
    open_page(page)
    page.locator("#control-section > summary").click()  # the section opens
    first = page.get_by_role("group", name="ControlNet unit 1")
    expect(first.get_by_label("ControlNet", exact=True).locator("option")).to_have_text(
        ["tiny-canny (canny)", "tiny-lineart (lineart)", "tiny-union (union)"])
    expect(first.get_by_label("Preprocessor").locator("option")).not_to_contain_text([re.compile("^depth_midas")])
    first.locator("input[type=file]").set_input_files(str(tmp_path / "edges.png"))
    first.get_by_label("Preprocessor").select_option("canny")
    low, high = first.get_by_label("Canny Low Threshold"), first.get_by_label("Canny High Threshold")
    expect(low).to_have_value("100")  # the defaults and ranges GET /api/v1/preprocessors declares
    assert (low.get_attribute("min"), low.get_attribute("max"), high.get_attribute("min")) == ("1", "255", "1")
    low.fill("50")
    high.fill("150")
    first.get_by_role("button", name="Preview the control map").click()
    expect(first.get_by_alt_text("Its control map")).to_be_visible()
    expect(first.locator("[data-status]")).to_have_text("The canny map, 64x64.")
    made = page.request.post("/api/v1/preprocess", data={"image": edges, "module": "canny", "threshold_a": 50, "threshold_b": 150})
    assert first.get_by_alt_text("Its control map").get_attribute("src") == f"data:image/png;base64,{made.json()['image']}"

    page.get_by_role("button", name="Add a ControlNet unit").click()
    second = page.get_by_role("group", name="ControlNet unit 2")
    second.locator("input[type=file]").set_input_files(str(tmp_path / "lines.png"))
    second.get_by_label("ControlNet", exact=True).select_option("tiny-union")
    expect(second.get_by_label("Control type").locator("option")).to_have_count(8)  # a Union model's types
    second.get_by_label("ControlNet", exact=True).select_option("tiny-lineart")
    expect(second.get_by_label("Control type")).to_be_hidden()
    second.get_by_label("Preprocessor").select_option("invert")
    expect(second.get_by_label("Canny Low Threshold")).to_have_count(0)  # invert has no thresholds
    second.get_by_label("Weight").fill("0.5")
    second.get_by_label("Starting step").fill("0.9")
    second.get_by_label("Ending step").fill("0.5")

    page.locator("#ip-section > summary").click()
    adapter = page.get_by_role("group", name="IP-Adapter unit 1")
    expect(adapter.get_by_label("IP-Adapter", exact=True)).to_have_value("tiny-ip-adapter")
    adapter.locator("input[type=file]").set_input_files(str(tmp_path / "lines.png"))
    adapter.get_by_label("Weight").fill("0.6")
    fill_form(page, prompt="a box", width=64, height=64, steps=2, seed=4)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(second.locator(".field-error")).to_contain_text("Starting step: start must be below end")  # the server's 422
    expect(second.get_by_label("Starting step")).to_have_attribute("aria-invalid", "true")
    expect(first.locator(".field-error")).to_be_empty()

    second.get_by_label("Starting step").fill("0.2")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    expect(second.locator(".field-error")).to_be_empty()
    meta = page.request.get(page.get_by_role("link", name="Metadata (JSON)").get_attribute("href")).json()
    assert [(u["model"], u["module"], u["weight"], u["start"], u["end"]) for u in meta["controlnet"]] == [
        ("tiny-canny", "canny", 1.0, 0.0, 1.0), ("tiny-lineart", "invert", 0.5, 0.2, 0.5)]
    assert (meta["controlnet"][0]["threshold_a"], meta["controlnet"][0]["threshold_b"]) == (50, 150)
    assert [(u["name"], u["weight"]) for u in meta["ip_adapter"]] == [("tiny-ip-adapter", 0.6)]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-controlnet.png"), full_page=True)

    page.get_by_role("button", name="Remove ControlNet unit 1").click()
    expect(page.get_by_role("group", name="ControlNet unit 2")).to_have_count(0)
    expect(page.get_by_role("group", name="ControlNet unit 1").get_by_label("Preprocessor")).to_have_value("invert")
    add = page.get_by_role("button", name="Add a ControlNet unit")
    add.click()
    add.click()
    expect(add).to_be_disabled()  # MAX_CONTROLNETS (3) units
    page.get_by_role("button", name="Add a reference image").click()
    expect(page.get_by_role("group", name="IP-Adapter unit 2")).to_be_visible()
    with page.expect_request(_jobs_request) as sent:
        page.get_by_role("button", name="Generate", exact=True).click()
    body = sent.value.post_data_json  # units without an image are not sent
    assert [(u["model"], u["module"]) for u in body["controlnet"]] == [("tiny-lineart", "invert")]
    assert [u["name"] for u in body["ip_adapter"]] == ["tiny-ip-adapter"]
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)


def test_a_server_without_controlnets_or_ip_adapters_says_so(page, server):
    open_page(page)
    expect(page.locator("#control-section summary")).to_contain_text("none usable in CONTROLNET_DIR")
    expect(page.locator("#ip-section summary")).to_contain_text("none usable in IP_ADAPTER_DIR")
    page.locator("#control-section > summary").click()
    expect(page.get_by_role("button", name="Add a ControlNet unit")).to_be_hidden()
    expect(page.get_by_role("group", name=re.compile("ControlNet unit"))).to_have_count(0)


def test_the_hires_toggle_makes_a_larger_image_with_progress_over_both_passes(page, server):
    open_page(page)
    fill_form(page, prompt="a harbour", width=64, height=64, steps=6)
    expect(page.get_by_label("Upscale by", exact=True)).to_be_hidden()
    page.get_by_label("Hires fix", exact=True).check()
    page.get_by_label("Upscale by", exact=True).fill("2")
    page.get_by_label("Hires upscaler", exact=True).select_option("Latent (bicubic)")
    page.locator("#hires_denoise").fill("0.5")
    page.evaluate(RECORD_PROGRESS)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    page.wait_for_function("() => document.getElementById('result-image').naturalWidth === 128")
    progress = page.evaluate("window.__seen")["progress"]
    assert any(re.match(r"step \d+/9 \(first pass\)", text) for text in progress), progress  # 6 + int(6 x 0.5)
    meta = page.request.get(page.get_by_role("link", name="Metadata (JSON)").get_attribute("href")).json()
    assert (meta["hires_scale"], meta["hires_upscaler"], meta["image_width"]) == (2.0, "Latent (bicubic)", 128)


def test_the_upscale_buttons_upscale_a_gallery_image_and_the_result(page, server):
    make_image(server, prompt="upscale: a small boat", width=96, height=64, steps=2, seed=77)
    open_page(page)
    expect(page.locator("#upscale-upscaler option[value='tiny-compact-2x']")).to_have_count(1)  # GET /api/v1/upscalers
    expect(page.get_by_label("Upscaler", exact=True)).to_have_value("tiny-compact-2x")  # a model before the resamplers
    page.get_by_role("button", name="Upscale the 96 × 64 image, seed 77").click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    page.wait_for_function("() => document.getElementById('result-image').naturalWidth === 192")
    expect(page.locator("#result-params")).to_contain_text("tiny-compact-2x")

    page.get_by_label("Upscaler", exact=True).select_option("Nearest")
    page.get_by_label("Scale", exact=True).fill("1.5")
    page.get_by_role("button", name="Upscale", exact=True).click()  # the result's own button: 192x128 -> 288x192
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=LONG)
    page.wait_for_function("() => document.getElementById('result-image').naturalWidth === 288")
    expect(page.locator("#gallery li").first).to_contain_text("Upscaled with Nearest")
