"""``sdxl-server --check-model``: says which model, from where, and whether it loads."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from sdxl_server.tools.check_model import check_model


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


def test_reports_why_a_model_does_not_load(settings, tmp_path):
    out = io.StringIO()
    assert check_model(settings.replace(model_id=str(tmp_path / "missing")), out) == 1
    assert "chosen:  by MODEL_ID" in out.getvalue()
    assert "result:  FAILED: could not load folder model" in out.getvalue() and "MODEL_ID=tiny" in out.getvalue()


def test_tiny(settings):
    out = io.StringIO()
    assert check_model(settings, out) == 0
    assert "model:   tiny" in out.getvalue() and "kind:    tiny" in out.getvalue()


def test_bad_settings_are_reported(settings):
    out = io.StringIO()
    assert check_model(settings.replace(device="cuda"), out) == 2
    assert "error: DEVICE=cuda but CUDA is not available" in out.getvalue()


def test_reports_the_refiner(tiny_cache):
    done = _check(tiny_cache, MODEL_ID="tiny", REFINER_ID="tiny")
    assert done.returncode == 0, done.stderr
    assert "refiner: tiny (tiny, chosen by REFINER_ID)" in done.stdout
    assert "refiner: loaded in" in done.stdout
    done = _check(tiny_cache, MODEL_ID="tiny", REFINER_ID="/nowhere/refiner")
    assert done.returncode == 1 and "refiner: FAILED" in done.stdout and "REFINER_ID" in done.stdout
