"""The house rules that keep the code navigable, checked on every module of every package (found
by walking the packages, so a new module is covered the day it is added):

- ``sdxl_server.api`` (HTTP and websocket) never imports torch or diffusers;
- ``sdxl_server.jobs`` and ``sdxl_server.pipeline`` never import aiohttp;
- ``sdxl_server.jobs`` imports no torch at import time (the worker thread does, lazily);
- the shared top-level modules (config, errors, params) import none of them;
- ``sdxl_server.tools`` may import anything;
- between the packages, every import (those inside functions too) is one that the ``imports``
  list of docs/architecture.md allows.

Each check imports each module alone in a fresh interpreter (forked from one that holds only
third-party libraries bringing nothing forbidden: ``import_probe.py``), so what an earlier test or
module imported cannot hide a violation.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sdxl_server

SHARED = ["sdxl_server", "sdxl_server.config", "sdxl_server.setting_values", "sdxl_server.errors", "sdxl_server.params",
          "sdxl_server.sampling"]


def modules_of(package: str) -> list[str]:
    module = __import__(package, fromlist=["__path__"])
    found = [package]
    for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
        if not info.name.endswith("__main__"):
            found.append(info.name)
    return sorted(found)


PROBE = Path(__file__).with_name("import_probe.py")


def imported_by(modules: list[str], forbidden: list[str]) -> dict[str, list[str]]:
    """For each of ``modules`` imported alone in a fresh interpreter, which of ``forbidden`` came with it."""
    code = f"import runpy; runpy.run_path({str(PROBE)!r}, run_name='__main__')"  # sys.path as for any -c
    done = subprocess.run([sys.executable, "-c", code, json.dumps(forbidden), *modules],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {name: result["error"][-2000:] for name, result in found.items() if isinstance(result, dict)}
    assert not failed, f"importing failed: {failed}"
    assert sorted(found) == sorted(modules)
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


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "jobs", "pipeline", "tools")


def stated_imports() -> list[tuple[str, str]]:
    """The ``importer -> imported`` pairs docs/architecture.md allows between the packages."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"```imports\n(.*?)```", page, re.S)
    assert block, "docs/architecture.md has no imports list"
    allowed = []
    for line in block.group(1).splitlines():
        source, _, targets = line.partition("->")
        allowed += [(source.strip(), target.strip()) for target in targets.split(",") if target.strip()]
    return allowed


def _package(module: str) -> str:
    """``api``, ``jobs``, ``pipeline``, ``tools``, ``__main__`` or ``shared``."""
    parts = module.split(".")[1:]
    if parts and parts[0] in (*PACKAGES, "__main__"):
        return parts[0]
    return "shared"


def imports_between_packages(sources: dict[str, str]) -> set[tuple[str, str]]:
    """``(importer, imported)`` for every import of one package's module by another package's,
    ``sources`` being module name -> code (relative imports resolved; ``imported`` may end with
    the name imported from the module)."""
    found = set()
    for module, code in sources.items():
        here = module.rsplit(".", 1)[0].split(".")
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{alias.name}" for alias in node.names]  # a module, or a name in one
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("sdxl_server") and _package(name) not in ("shared", _package(module)):
                    found.add((module.removesuffix(".__init__"), name))
    return found


def _allowed(importer: str, imported: str, allowed: list[tuple[str, str]]) -> bool:
    def under(name: str, stated: str) -> bool:
        stated = f"sdxl_server.{stated}"
        return name == stated or name.startswith(stated + ".")

    return any(under(importer, source) and under(imported, target) for source, target in allowed)


def package_sources() -> dict[str, str]:
    sources = {}
    for path in (ROOT / "sdxl_server").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        sources[name] = path.read_text(encoding="utf-8")
    return sources


def test_every_import_between_packages_is_one_the_architecture_page_states():
    allowed = stated_imports()
    stray = sorted(pair for pair in imports_between_packages(package_sources()) if not _allowed(*pair, allowed))
    assert stray == [], "imports docs/architecture.md does not allow (allow them there, or remove them)"


def test_the_import_check_can_fail():
    """A pipeline module importing the API, or the API importing the engine outside the factory, is caught."""
    sources = {
        "sdxl_server.pipeline.example": "from ..api import keys\n",
        "sdxl_server.api.example": "def f():\n    from ..pipeline.engine import Engine\n",
        "sdxl_server.api.fine": "from ..jobs.queue import JobQueue\nfrom ..params import GenerationParams\n",
    }
    stray = {pair for pair in imports_between_packages(sources) if not _allowed(*pair, stated_imports())}
    assert stray == {("sdxl_server.pipeline.example", "sdxl_server.api.keys"),
                     ("sdxl_server.api.example", "sdxl_server.pipeline.engine.Engine")}
