"""``sdxl-server --check-model``: says which model, from where, and whether it loads."""

from __future__ import annotations

import os
import subprocess
import sys


def _check(tiny_cache, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "TINY_CACHE": str(tiny_cache), "TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "sdxl_server", "--check-model"], env=environ, capture_output=True, text=True, timeout=300
    )


def test_reports_a_loadable_model(tiny_cache, tiny_model_dir, tmp_path):
    done = _check(tiny_cache, MODEL_DIR=str(tiny_model_dir), MODEL_ID="")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"model:   {tiny_model_dir}" in out
    assert "kind:    folder" in out and "chosen:  by MODEL_DIR" in out
    assert "device:  cpu (float32); CUDA available: False" in out
    assert "result:  loaded in" in out and "unet" in out and "default: 1024px" in out


def test_reports_why_a_model_does_not_load(tiny_cache, tmp_path):
    done = _check(tiny_cache, MODEL_ID=str(tmp_path / "missing"))
    assert done.returncode == 1
    assert "chosen:  by MODEL_ID" in done.stdout
    assert "result:  FAILED: could not load folder model" in done.stdout and "MODEL_ID=tiny" in done.stdout


def test_tiny(tiny_cache):
    done = _check(tiny_cache, MODEL_ID="tiny")
    assert done.returncode == 0, done.stderr
    assert "model:   tiny" in done.stdout and "kind:    tiny" in done.stdout
