"""What one generation is asked to do, independent of HTTP and of torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Sampler names a request may give; the engine maps each onto a diffusers scheduler.
# "default" keeps the model's own scheduler (Euler for SDXL base).
SCHEDULERS: dict[str, str] = {
    "default": "the model's own scheduler",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "ddim": "DDIM",
    "unipc": "UniPC",
    "deis": "DEIS",
}

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationParams:
    """A validated request. ``seed`` is always set: a missing one is drawn before the job is queued."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    scheduler: str = "default"
    num_images: int = 1
    loras: tuple[tuple[str, float], ...] = ()  # (name, weight), checked against LORA_DIR
    model: str = ""  # a name from the model catalog; "" is the default model

    def __post_init__(self) -> None:
        # Rebuilt from JSON (job store: lists; metadata: {name, weight}): keep hashable tuples.
        pairs = [(item["name"], item["weight"]) if isinstance(item, dict) else item for item in self.loras]
        object.__setattr__(self, "loras", tuple((str(name), float(weight)) for name, weight in pairs))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["loras"] = [{"name": name, "weight": weight} for name, weight in self.loras]
        return values

    @property
    def pixels(self) -> int:
        """Pixels the job makes (all its images): what its cost scales with."""
        return self.width * self.height * self.num_images
