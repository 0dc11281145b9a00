"""Shared fixtures: the tiny model (built once per session) and a running app around it."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest

from sdxl_server.api import keys
from sdxl_server.api.app import create_app
from sdxl_server.config import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

SLOW_S = 10.0  # what a test marked ``slow`` without its own figure is expected to take
QUICK_S = 1.0  # any other test: an app, a model load, a few tiny images


def _expected_seconds(item: pytest.Item) -> float:
    mark = item.get_closest_marker("slow")
    if mark is None:
        return QUICK_S
    return float(mark.args[0]) if mark.args else SLOW_S


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first (by their tests' ``slow(seconds)`` figures), each file's tests in their
    order: xdist (``--dist loadfile --no-loadscope-reorder``) hands out whole files in this order, so a
    long file starts at once rather than at the tail, where one process would run it while the other
    has nothing left."""
    expected: defaultdict[Path, float] = defaultdict(float)
    for item in items:
        expected[item.path] += _expected_seconds(item)
    items.sort(key=lambda item: -expected[item.path])  # stable: files stay whole, equal ones in their order


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Where the tiny model is built once for the whole session (or ``TINY_CACHE`` if set). Under
    xdist the processes share it, so the models built on first use (the refiner, upscalers...) are
    built once for the run (each appears whole, by a rename: two processes may build one at once)."""
    from sdxl_server.pipeline.tiny import ensure_tiny_model

    if os.environ.get("TINY_CACHE"):
        root = Path(os.environ["TINY_CACHE"])
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent / "tiny"  # the run's folder, above each process's own
    else:
        root = tmp_path_factory.mktemp("tiny")
    ensure_tiny_model(root)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_cache) -> Path:
    from sdxl_server.pipeline.tiny import ensure_tiny_model

    return ensure_tiny_model(tiny_cache)


@pytest.fixture
def settings(tiny_cache, tmp_path) -> Settings:
    """Tiny model, small defaults, one torch thread, outputs in a fresh folder."""
    return Settings(
        model_id="tiny",
        tiny_cache=tiny_cache,
        output_dir=tmp_path / "outputs",
        model_dir=tmp_path / "no-model-here",
        styles_file=tmp_path / "styles.csv",
        embeddings_dir=tmp_path / "embeddings",
        upscalers_dir=tmp_path / "upscalers",
        default_width=64,
        default_height=64,
        default_steps=3,
        max_width=512,
        max_height=512,
        queue_size=2,
        torch_threads=1,
    )


@pytest.fixture
def make_client(aiohttp_client):
    """Start an app for ``settings`` (and an optional engine factory); wait for the model load."""

    async def start(settings: Settings, engine_factory=None):
        app = create_app(settings, engine_factory=engine_factory)
        client = await aiohttp_client(app)
        await app[keys.QUEUE].ready.wait()
        return client

    return start


@pytest.fixture
async def client(make_client, settings):
    return await make_client(settings)
