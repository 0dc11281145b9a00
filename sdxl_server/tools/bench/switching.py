"""The switching section: LoRA load and switch times, per-step cost of LoRAs (unfused and fused),
and model switch times (from disk and from the RAM cache), on the engine directly.

Two LoRAs are built for the model's own UNet (random weights from its layers' shapes) in a scratch
LORA_DIR. The second model is a second tiny model (another seed) for MODEL_ID=tiny, else the first
other usable model in MODELS_DIR (none: the model figures are left out, with the reason).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ...config import Settings
from ...params import GenerationParams
from ...pipeline.engine import Engine
from ..lora_builder import lora_weights_for, save_diffusers_layout
from .options import BenchOptions


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _step_s(engine: Engine, params: GenerationParams, runs: int) -> float:
    """Median seconds per denoising step of ``runs`` generations (after one not counted)."""
    engine.generate(params, lambda *a: None, lambda: False)
    per_step = sorted(
        engine.generate(params, lambda *a: None, lambda: False).info["inference_s"] / params.steps for _ in range(runs)
    )
    return per_step[len(per_step) // 2]


def _fused_step_s(engine: Engine, params: GenerationParams, names: list[str], runs: int) -> float:
    """Per-step seconds with ``names`` fused into the weights (then the model is reloaded clean)."""
    engine.loras.apply(engine.pipe, tuple((name, 1.0) for name in names))
    adapters = engine.loras.adapter_names(names)
    engine.pipe.fuse_lora(adapter_names=adapters, lora_scale=1.0)
    engine.pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
    engine.loras.forget()
    try:
        return _step_s(engine, params, runs)
    finally:
        engine.close()
        engine.load()


def _second_model(settings: Settings, scratch: Path) -> tuple[Settings, str | None, str | None]:
    if (settings.model_id or "").lower() == "tiny":
        from ...pipeline.tiny import build_tiny_pipeline

        build_tiny_pipeline(seed=1).save_pretrained(scratch / "models" / "tiny-b")
        return settings.replace(models_dir=scratch / "models"), "tiny-b", None
    from ...pipeline.model_catalog import scan

    others = [e.name for e in scan(settings) if not e.default and not e.broken]
    if not others:
        return settings, None, f"no second usable model in MODELS_DIR ({settings.models_dir})"
    return settings, others[0], None


def section_switching(settings: Settings, opts: BenchOptions) -> dict[str, Any]:
    runs = max(1, min(opts.runs, 3))
    with tempfile.TemporaryDirectory(prefix="sdxl-bench-switch-") as tmp:
        scratch = Path(tmp)
        (scratch / "loras").mkdir()
        served, other, no_other = _second_model(settings, scratch)
        served = served.replace(lora_dir=scratch / "loras", lora_cache=4, model_cache=1, model_ram_cache=1)
        engine = Engine(served)
        load_s = _timed(engine.load)
        for index, name in enumerate(("bench-a", "bench-b")):
            save_diffusers_layout(lora_weights_for(engine.pipe.unet, seed=index), scratch / "loras" / f"{name}.safetensors")
        engine.lora_files.refresh()
        params = GenerationParams.from_dict(opts.body())  # the older scheduler field: split by from_dict
        apply = engine.loras.apply
        lora = {
            "load_s": round(_timed(lambda: apply(engine.pipe, (("bench-a", 1.0),))), 4),
            "second_load_s": round(_timed(lambda: apply(engine.pipe, (("bench-a", 1.0), ("bench-b", 0.5)))), 4),
        }
        switches = [_timed(lambda: apply(engine.pipe, ((name, 0.8),))) for _ in range(5) for name in ("bench-a", "bench-b")]
        lora["switch_s"] = round(sorted(switches)[len(switches) // 2], 5)
        lora["off_s"] = round(_timed(lambda: apply(engine.pipe, ())), 5)
        step = {"none": _step_s(engine, params, runs)}
        step["one_unfused"] = _step_s(engine, dataclasses.replace(params, loras=(("bench-a", 1.0),)), runs)
        step["two_unfused"] = _step_s(engine, dataclasses.replace(params, loras=(("bench-a", 1.0), ("bench-b", 1.0))), runs)
        step["one_fused"] = _fused_step_s(engine, params, ["bench-a"], runs)
        step["two_fused"] = _fused_step_s(engine, params, ["bench-a", "bench-b"], runs)
        lora["step_s"] = {k: round(v, 5) for k, v in step.items()}
        lora["step_slowdown"] = {k: round(v / step["none"], 3) for k, v in step.items() if k != "none"}

        model: dict[str, Any] = {"model_load_s": round(load_s, 3)}
        if other is None:
            model["skipped"] = no_other
        else:
            default = engine.active
            model["other"] = other
            model["switch_from_disk_s"] = round(_timed(lambda: engine.use_model(other)), 3)
            model["switch_back_from_ram_s"] = round(_timed(lambda: engine.use_model(default)), 3)
            model["switch_again_from_ram_s"] = round(_timed(lambda: engine.use_model(other)), 3)
        engine.close()
    return {"params": {"width": opts.width, "height": opts.height, "steps": opts.steps}, "runs": runs,
            "lora": lora, "model": model}
