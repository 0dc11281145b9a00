"""The house rules that keep the code navigable: the HTTP layer never imports torch, the pipeline
layer never imports aiohttp."""

from __future__ import annotations

import subprocess
import sys

HTTP_LAYER = [
    "sdxl_server.app", "sdxl_server.views", "sdxl_server.middleware", "sdxl_server.validation",
    "sdxl_server.schemas", "sdxl_server.jobs", "sdxl_server.keys", "sdxl_server.config",
    "sdxl_server.storage", "sdxl_server.errors", "sdxl_server.worker", "sdxl_server.__main__",
    "sdxl_server.events", "sdxl_server.websocket", "sdxl_server.security", "sdxl_server.metrics",
    "sdxl_server.openapi", "sdxl_server.openai_api", "sdxl_server.a1111", "sdxl_server.loadtest",
    "sdxl_server.jobstore", "sdxl_server.housekeeping",
]
PIPELINE_LAYER = ["sdxl_server.engine", "sdxl_server.tiny", "sdxl_server.preview", "sdxl_server.fullsize"]


def _imports(modules: list[str], forbidden: str) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden + '.'!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - our own subprocess's repr of a list


def test_http_layer_never_imports_torch():
    assert _imports(HTTP_LAYER, "torch") == []


def test_pipeline_layer_never_imports_aiohttp():
    assert _imports(PIPELINE_LAYER, "aiohttp") == []
