"""``sdxl-server --check-model``: which model would be loaded, from where; load it once; report."""

from __future__ import annotations

import sys
import time

from ..config import ConfigError, Settings
from ..errors import ApiError


def check_model(settings: Settings, out=sys.stdout) -> int:
    """Print what the server would load and whether it loads; 0 when it does, 1 when not, 2 on bad settings."""
    from ..pipeline.engine import Engine

    try:
        engine = Engine(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=out)
        return 2
    source, runtime = engine.source, engine.runtime
    print(f"model:   {source.model_id}", file=out)
    print(f"kind:    {source.kind.replace('_', ' ')} ({source.location})", file=out)
    print(f"chosen:  by {source.origin}", file=out)
    if source.vae:
        print(f"vae:     {source.vae}", file=out)
    print(f"device:  {runtime.device} ({runtime.dtype}); CUDA available: {runtime.cuda_available}", file=out)
    started = time.perf_counter()
    try:
        engine.load()
    except ApiError as exc:
        print(f"result:  FAILED: {exc.message}", file=out)
        return 1
    pipe = engine.pipe
    counts = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
    }
    print(f"result:  loaded in {time.perf_counter() - started:.1f}s", file=out)
    print("params:  " + ", ".join(f"{name} {count / 1e6:.1f}M" for name, count in counts.items()), file=out)
    print(f"default: {pipe.default_sample_size * pipe.vae_scale_factor}px, scheduler {type(pipe.scheduler).__name__}", file=out)
    print(f"options: {engine.options}", file=out)
    refiner = engine.refiner
    if refiner.source is None:
        print("refiner: none (set REFINER_ID, or put a *refiner* checkpoint in MODEL_DIR)", file=out)
    else:
        print(f"refiner: {refiner.source.model_id} ({refiner.source.kind.replace('_', ' ')}, chosen by {refiner.source.origin})", file=out)
        try:
            refiner.ensure(pipe, engine.options)
        except ApiError as exc:
            print(f"refiner: FAILED: {exc.message}", file=out)
            engine.close()
            return 1
        print(f"refiner: loaded in {refiner.load_seconds:.1f}s, unet {sum(p.numel() for p in refiner.pipe.unet.parameters()) / 1e6:.1f}M", file=out)
    engine.close()
    return 0
