"""What the benchmark is asked to do: its options, the request body, the settings it serves with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import Settings, settings_fields
from ...params import GenerationParams
from ...pipeline.annotator_files import AnnotatorCatalog

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the bench's own server signs its webhooks with it

SECTIONS = (
    "overhead", "loop", "progress", "memory", "batch", "png", "coldstart", "switching", "modes", "storage", "webhooks",
    "admission", "controlnet", "upscale", "hires", "steps",
)
PROMPT = "a lighthouse on a cliff at dusk, waves, dramatic sky, highly detailed"
NEGATIVE = "blurry, low quality"


class BenchError(RuntimeError):
    """A section could not be measured (the server answered an error, a client was closed...)."""


@dataclass
class BenchOptions:
    width: int
    height: int
    steps: int
    guidance_scale: float
    prompt: str = PROMPT
    negative_prompt: str = NEGATIVE
    scheduler: str = "default"
    seed: int = 1234
    runs: int = 5
    loop_jobs: int = 2
    health_interval_ms: float = 10.0
    idle_samples: int = 100
    clients: int = 100
    progress_runs: int = 3
    previews: bool = False
    health_flood: bool = False
    memory_jobs: int = 300
    memory_size: int = 64
    memory_steps: int = 1
    memory_fullsize: bool = False  # memory: also the full-size random UNet with and without float8 (GBs of RAM)
    coldstart_runs: int = 1
    batch_size: int = 4
    batch_runs: int = 2
    png_levels: tuple[int, ...] = (0, 1, 3, 6, 9)
    webhook_jobs: int = 20
    admission_keys: int = 100
    admission_samples: int = 2000
    timeout_s: float = 1800.0

    def body(self, seed: int | None = None, **changes: Any) -> dict[str, Any]:
        body = {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "width": self.width,
            "height": self.height, "steps": self.steps, "guidance_scale": self.guidance_scale,
            "seed": self.seed if seed is None else seed, "scheduler": self.scheduler,
        }
        body.update(changes)
        return body


def params_from_body(body: dict[str, Any]) -> GenerationParams:
    """The :class:`GenerationParams` the server makes of ``body`` (only the fields it knows)."""
    return GenerationParams.from_dict(body)


def prepare_settings(settings: Settings, opts: BenchOptions, output_dir: Path) -> Settings:
    """The settings the bench serves with: loopback, a scratch output folder, limits that allow
    the benchmark's sizes, the model loaded at start."""
    return settings.replace(
        host="127.0.0.1",
        output_dir=output_dir,
        preload=True,
        max_width=max(settings.max_width, opts.width, opts.memory_size),
        max_height=max(settings.max_height, opts.height, opts.memory_size),
        max_steps=max(settings.max_steps, opts.steps, opts.memory_steps),
        queue_size=max(settings.queue_size, 2),
        webhook_secret=WEBHOOK_SECRET,  # the webhooks section's receiver verifies with it
        webhook_allow=",".join(filter(None, (str(settings.webhook_allow), "127.0.0.1"))),
        controlnet_dir=output_dir.parent / "controlnet",  # the controlnet section saves its ControlNet here
        annotator_dir=settings.annotator_dir if AnnotatorCatalog(settings.annotator_dir).usable()
        else output_dir.parent / "annotators",  # where the controlnet section writes the tiny ones
    )


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting as its environment variable, so a child process loads the same ones."""
    env: dict[str, str] = {}
    for f in settings_fields():
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(map(str, value))
        else:
            text = str(value)
        env[f.metadata["env"]] = text
    return env


