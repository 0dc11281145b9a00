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
    # Image to image and inpainting: the input image and mask by the SHA-256 of the bytes sent
    # (the image itself waits in OUTPUT_DIR/inputs until the job ends; see jobs/inputs.py).
    init_image: str | None = None
    strength: float = 0.75
    mask: str | None = None
    mask_blur: int = 4
    inpaint_area: str = "whole"
    mask_padding: int = 32
    resize_mode: int = 0
    inpainting_fill: int = 1
    # The refiner: "none", "ensemble" (it finishes the base's latents from refiner_switch_at) or
    # "image" (it repaints the base's result at refiner_strength).
    refiner: str = "none"
    refiner_switch_at: float = 0.8
    refiner_strength: float = 0.3

    def __post_init__(self) -> None:
        # Rebuilt from JSON (job store: lists; metadata: {name, weight}): keep hashable tuples.
        pairs = [(item["name"], item["weight"]) if isinstance(item, dict) else item for item in self.loras]
        object.__setattr__(self, "loras", tuple((str(name), float(weight)) for name, weight in pairs))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["loras"] = [{"name": name, "weight": weight} for name, weight in self.loras]
        return values

    @property
    def mode(self) -> str:
        """``txt2img``, ``img2img`` or ``inpaint``."""
        if self.init_image is None:
            return "txt2img"
        return "img2img" if self.mask is None else "inpaint"

    @property
    def total_steps(self) -> int:
        """Denoising steps that really run (about; the engine reports the exact count): image to
        image skips the first ``1 - strength`` of them; the refiner's steps are added."""
        base = self.steps if self.init_image is None else denoising_steps(self.steps, self.strength)
        if self.refiner == "ensemble":
            return base  # the same schedule, split between the two models
        if self.refiner == "image":
            return base + denoising_steps(self.steps, self.refiner_strength)
        return base

    @property
    def pixels(self) -> int:
        """Pixels the job makes (all its images): what its cost scales with."""
        return self.width * self.height * self.num_images


INPAINT_AREAS = ("whole", "masked")
REFINER_MODES = ("none", "ensemble", "image")
RESIZE_MODES = {0: "stretch", 1: "crop", 2: "fill"}
INPAINTING_FILLS = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}


def denoising_steps(steps: int, strength: float) -> int:
    """The steps diffusers runs for ``steps`` at ``strength`` (its ``get_timesteps``)."""
    return min(int(steps * strength), steps)
