"""The ``openai`` npm package, driven by node, streams an image from this server.

The package (pinned in ``tests/node/package.json``) is installed into ``.ci-artifacts/node`` (or
``OPENAI_NODE_DIR``): ``.ci/run`` does it; here it is installed when missing, and the test is
skipped, saying why, only when node is absent or npm cannot install it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NODE_TESTS = ROOT / "tests" / "node"
KEY = "sk-node-test"


def _pinned() -> str:
    return json.loads((NODE_TESTS / "package.json").read_text())["dependencies"]["openai"]


def _installed(folder: Path) -> str | None:
    manifest = folder / "node_modules" / "openai" / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.is_file() else None


@pytest.fixture(scope="module")
def openai_node() -> Path:
    """The folder whose ``node_modules`` holds the pinned openai package."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    folder = Path(os.environ.get("OPENAI_NODE_DIR") or ROOT / ".ci-artifacts" / "node")
    if _installed(folder) == _pinned():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"the openai npm package is not in {folder}, and npm is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(NODE_TESTS / "package.json", folder / "package.json")
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--prefix", str(folder)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or _installed(folder) != _pinned():
        pytest.skip(f"npm could not install openai@{_pinned()} into {folder}: {done.stderr.strip()[-300:]}")
    return folder


@pytest.fixture
def settings(settings):
    return settings.replace(api_key=KEY)


async def test_the_npm_package_streams_partial_images_then_the_image(client, openai_node):
    node = await asyncio.create_subprocess_exec(
        "node", str(NODE_TESTS / "stream_images.mjs"), str(openai_node), str(client.make_url("/v1")), KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(node.communicate(), 120)
    assert node.returncode == 0, err.decode()[-2000:]
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert [event["type"] for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.get("partial_image_index") for event in events] == [0, 1, None]
    for event in events:
        image = Image.open(io.BytesIO(base64.b64decode(event["b64_json"])))
        assert image.format == "JPEG" and image.size == (128, 64)
        assert event["size"] == "128x64" and event["output_format"] == "jpeg" and event["created_at"] > 0
    assert events[-1]["usage"]["total_tokens"] == 0
