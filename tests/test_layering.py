"""The house rules that keep the code navigable, checked on every module of every package (found
by walking the packages, so a new module is covered the day it is added):

- ``sdxl_server.api`` (HTTP and websocket) never imports torch or diffusers;
- ``sdxl_server.jobs`` and ``sdxl_server.pipeline`` never import aiohttp;
- ``sdxl_server.jobs`` imports no torch at import time (the worker thread does, lazily);
- the shared top-level modules (config, errors, params) import none of them;
- ``sdxl_server.tools`` may import anything.

Each check imports the modules in a fresh interpreter, so what an earlier test imported cannot hide
a violation.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import sdxl_server

SHARED = ["sdxl_server", "sdxl_server.config", "sdxl_server.setting_values", "sdxl_server.errors", "sdxl_server.params"]


def modules_of(package: str) -> list[str]:
    module = __import__(package, fromlist=["__path__"])
    found = [package]
    for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
        if not info.name.endswith("__main__"):
            found.append(info.name)
    return sorted(found)


def imported_by(modules: list[str], forbidden: list[str]) -> dict[str, list[str]]:
    """For each of ``modules`` imported alone in a fresh interpreter, which of ``forbidden`` came with it."""
    code = (
        "import importlib, json, sys\n"
        f"name = sys.argv[1]; forbidden = {forbidden!r}\n"
        "importlib.import_module(name)\n"
        "print(json.dumps(sorted(f for f in forbidden if f in sys.modules)))"
    )
    found = {}
    for name in modules:
        done = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"importing {name} failed: {done.stderr[-2000:]}"
        found[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: bad for name, bad in found.items() if bad}


def test_every_module_belongs_to_a_layer():
    packages = {"sdxl_server.api", "sdxl_server.jobs", "sdxl_server.pipeline", "sdxl_server.tools"}
    for info in pkgutil.iter_modules(sdxl_server.__path__):
        name = f"sdxl_server.{info.name}"
        assert name in packages or name in SHARED or name == "sdxl_server.__main__", f"{name} is in no layer"


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("sdxl_server.api", ["torch", "diffusers", "transformers"]),
        ("sdxl_server.jobs", ["aiohttp", "torch", "diffusers"]),
        ("sdxl_server.pipeline", ["aiohttp"]),
    ],
)
def test_layer_never_imports(layer, forbidden):
    assert imported_by(modules_of(layer), forbidden) == {}


def test_shared_modules_import_no_layer_and_no_framework():
    forbidden = ["aiohttp", "torch", "diffusers", "sdxl_server.api", "sdxl_server.jobs", "sdxl_server.pipeline"]
    assert imported_by(SHARED, forbidden) == {}


def test_the_server_entry_point_imports_no_torch_before_it_serves():
    assert imported_by(["sdxl_server.__main__"], ["torch"]) == {}


def test_the_check_can_fail():
    """The checker itself sees a forbidden import when there is one."""
    assert imported_by(["sdxl_server.pipeline.engine"], ["torch"]) == {"sdxl_server.pipeline.engine": ["torch"]}


def test_the_default_install_and_backend_local_never_import_ray(settings):
    """Ray is an optional extra: a BACKEND=local server that starts and runs a job never imports it."""
    code = (
        "import asyncio, json, sys\n"
        "from aiohttp.test_utils import TestClient, TestServer\n"
        "from sdxl_server.api.app import create_app\n"
        "from sdxl_server.config import load_settings\n"
        "import sdxl_server.jobs.ray_backend, sdxl_server.jobs.replica\n"  # the backend's own modules import it lazily
        f"settings = load_settings({{'MODEL_ID': 'tiny', 'OUTPUT_DIR': {str(settings.output_dir)!r}, "
        f"'TINY_CACHE': {str(settings.tiny_cache)!r}}})\n"
        "async def main():\n"
        "    async with TestClient(TestServer(create_app(settings))) as client:\n"
        "        done = await client.post('/api/v1/generate', json={'prompt': 'x', 'steps': 1, 'width': 64, 'height': 64})\n"
        "        assert done.status == 200, done.status\n"
        "asyncio.run(main())\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
