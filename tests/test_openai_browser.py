"""The ``openai`` npm package in a real Chromium page (``dangerouslyAllowBrowser``), served from
another origin that ``CORS_ORIGINS`` allows: its preflight (with its ``x-stainless-*`` headers)
passes and it streams an image from this server. Skipped, saying why, without Chromium,
playwright, node or the package (``tests/test_openai_node.py`` installs it)."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
from live_server import LiveServer, free_port
from test_browser import CHROMIUM, CHROMIUM_ARGS, sync_api
from test_openai_node import openai_node  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
KEY = "sk-browser-test"

PAGE = """<!doctype html><meta charset="utf-8"><title>openai in a page</title>
<script type="module">
import OpenAI from "./openai/index.mjs";
try {
  const client = new OpenAI({ baseURL: %(base)s, apiKey: %(key)s, dangerouslyAllowBrowser: true, maxRetries: 0 });
  const stream = await client.images.generate({ prompt: "a fox", size: "64x64", stream: true, partial_images: 1, steps: 4 });
  const events = [];
  for await (const event of stream) events.push({ type: event.type, bytes: event.b64_json.length });
  window.result = events;
} catch (error) {
  window.failure = String(error);
}
</script>"""


class _Page(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript"}

    def log_message(self, *args):
        pass


@pytest.fixture
def page_origin(tmp_path, openai_node):  # noqa: F811
    """A static server for the page and the package, on its own port (its own origin)."""
    port = free_port()
    (tmp_path / "openai").symlink_to(openai_node / "node_modules" / "openai", target_is_directory=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Page, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}", tmp_path
    server.shutdown()
    server.server_close()


def test_the_npm_package_in_a_browser_page_streams_from_an_allowed_origin(tiny_cache, tmp_path_factory, page_origin):
    origin, folder = page_origin
    server = LiveServer(tiny_cache, tmp_path_factory.mktemp("browser-openai") / "outputs",
                        API_KEY=KEY, CORS_ORIGINS=origin, PREVIEW_EVERY="1").wait_ready()
    try:
        (folder / "index.html").write_text(PAGE % {"base": json.dumps(server.url + "/v1"), "key": json.dumps(KEY)})
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(origin + "/index.html")
                page.wait_for_function("window.result || window.failure", timeout=120_000)
                failure, result = page.evaluate("window.failure"), page.evaluate("window.result")
            finally:
                browser.close()
        assert failure is None, failure
        assert [event["type"] for event in result] == ["image_generation.partial_image", "image_generation.completed"]
        assert all(event["bytes"] > 100 for event in result)
    finally:
        server.stop()
