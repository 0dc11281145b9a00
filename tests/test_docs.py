"""The documentation stays true: every command it shows exists, every link it makes resolves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXT = {page: page.read_text(encoding="utf-8") for page in PAGES}
COMMANDS = sorted({m for text in TEXT.values() for m in re.findall(r"python -m (sdxl_server[a-z_.]*)", text)})


@pytest.mark.parametrize("module", COMMANDS)
def test_every_documented_command_runs(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_the_docs_show_the_commands_we_ship():
    assert {"sdxl_server", "sdxl_server.tools.bench", "sdxl_server.tools.loadtest"} <= set(COMMANDS)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", TEXT[page]):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_architecture_page_names_every_module():
    architecture = TEXT[ROOT / "docs" / "architecture.md"]
    for path in sorted((ROOT / "sdxl_server").rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py") and path.parent.name != "sdxl_server":
            continue
        if path.parent.name == "bench":
            assert f"`{path.stem}`" in architecture or path.stem in ("__init__", "__main__"), path
            continue
        assert f"`{path.name}`" in architecture, f"docs/architecture.md does not mention {path.relative_to(ROOT)}"
