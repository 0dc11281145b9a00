"""The cold-start section: a fresh process, timed from its start."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ...config import Settings
from ...params import GenerationParams
from .options import BenchError, BenchOptions, settings_environment
from .stats import percentile

# The child of a cold start: timestamps (time.perf_counter(), CLOCK_MONOTONIC on Linux, so
# comparable with the parent's) at each phase, printed as one JSON line.
COLDSTART_CHILD = r"""
import time
t_start = time.perf_counter()
import json, os, sys
import torch
import diffusers
from sdxl_server.api.app import create_app
from sdxl_server.config import load_settings
from sdxl_server.pipeline.engine import Engine
from sdxl_server.params import GenerationParams
t_imported = time.perf_counter()
engine = Engine(load_settings(os.environ))
engine.load()
if engine.runtime.on_cuda:
    torch.cuda.synchronize()
t_loaded = time.perf_counter()
params = GenerationParams.from_dict(json.loads(sys.argv[1]))
engine.generate(params, lambda *a: None, lambda: False)
t_first = time.perf_counter()
engine.generate(params, lambda *a: None, lambda: False)
t_second = time.perf_counter()
print("BENCH_COLDSTART " + json.dumps({
    "start": t_start, "imported": t_imported, "loaded": t_loaded, "first": t_first, "second": t_second,
    "model_load_s": engine.load_seconds, "device": engine.runtime.device,
}), flush=True)
"""


def coldstart_once(settings: Settings, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Start a fresh interpreter that loads the model and generates twice; split its time."""
    names = {f.name for f in dataclasses.fields(GenerationParams)}
    params = {k: v for k, v in body.items() if k in names}
    package_root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, **settings_environment(settings)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    spawned = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", COLDSTART_CHILD, json.dumps(params)], env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    ended = time.perf_counter()
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_COLDSTART ")), None)
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BenchError(f"the cold-start process failed (exit {done.returncode}): {' | '.join(tail)}")
    t = json.loads(line.split(" ", 1)[1])
    return {
        "interpreter_s": round(t["start"] - spawned, 4),
        "imports_s": round(t["imported"] - t["start"], 4),
        "model_load_s": round(t["loaded"] - t["imported"], 4),
        "first_generation_s": round(t["first"] - t["loaded"], 4),
        "second_generation_s": round(t["second"] - t["first"], 4),
        "ready_s": round(t["loaded"] - spawned, 4),
        "first_image_s": round(t["first"] - spawned, 4),
        "process_s": round(ended - spawned, 4),
        "device": t["device"],
    }


def section_coldstart(settings: Settings, opts: BenchOptions) -> dict[str, Any]:
    body = opts.body()
    runs = [coldstart_once(settings, body, opts.timeout_s) for _ in range(max(1, opts.coldstart_runs))]
    keys_ = [k for k in runs[0] if k.endswith("_s")]
    return {
        "runs": len(runs),
        "params": {k: body[k] for k in ("width", "height", "steps")},
        **{k: round(percentile([r[k] for r in runs], 50), 4) for k in keys_},
        "each": runs,
    }


