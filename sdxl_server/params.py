"""What one generation is asked to do, independent of HTTP and of torch.

A request is one :class:`GenerationParams`: the core fields, its input images by role
(``{"init": sha256, "mask": sha256}``), and its options in nested groups (image to image,
inpainting, refiner). Clients, the job store and the metadata see it flat
(``strength``, ``mask_blur``, ``refiner_switch_at``, ``init_image`` ...): :data:`FLAT_FIELDS` and
:data:`INPUT_ROLES` are the one place that maps the flat names onto the groups and roles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .sampling import AUTOMATIC, DEFAULT_SAMPLER, split_combined, timesteps_run

MAX_SEED = 2**32 - 1
# CLIP skip as A1111 counts it: 1 is the model's usual layer; 12 reaches CLIP-L's first (SDXL's
# CLIP-L has 12 layers), the deepest skip that means something for both text encoders.
CLIP_SKIP_MAX = 12

INPAINT_AREAS = ("whole", "masked")
REFINER_MODES = ("none", "ensemble", "image")
RESIZE_MODES = {0: "stretch", 1: "crop", 2: "fill"}
INPAINTING_FILLS = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}


@dataclass(frozen=True)
class InputRole:
    """One kind of input image a request may carry: its role, the flat field that names it (a
    request's field, the job record's and, with ``_sha256``, the metadata's) and the PIL mode
    the pipeline reads it in."""

    role: str
    field: str
    image_mode: str


# Every input role: storage, holds, sweeps, recovery, Ray and the metadata iterate this table.
INPUT_ROLES: dict[str, InputRole] = {
    "init": InputRole("init", "init_image", "RGB"),
    "mask": InputRole("mask", "mask", "L"),
}


def role_of_field(name: str) -> InputRole | None:
    return next((role for role in INPUT_ROLES.values() if role.field == name), None)


@dataclass(frozen=True)
class ImageOptions:
    """Image to image (and inpainting): how much of the input is repainted, and how the input is
    brought to the output's size (A1111's resize modes)."""

    strength: float = 0.75
    resize_mode: int = 0


@dataclass(frozen=True)
class InpaintOptions:
    """Inpainting: the mask's blur, the area repainted, its padding and what the masked area starts from."""

    mask_blur: int = 4
    area: str = "whole"
    padding: int = 32
    fill: int = 1


@dataclass(frozen=True)
class RefinerOptions:
    """The refiner: ``none``, ``ensemble`` (it finishes the base's latents from ``switch_at``) or
    ``image`` (it repaints the base's result at ``strength``)."""

    mode: str = "none"
    switch_at: float = 0.8
    strength: float = 0.3


# flat name -> (group, field): the one map between what clients, the job store and the metadata
# see and the groups. A new group adds its lines here.
FLAT_FIELDS: dict[str, tuple[str, str]] = {
    "strength": ("image", "strength"),
    "resize_mode": ("image", "resize_mode"),
    "mask_blur": ("inpaint", "mask_blur"),
    "inpaint_area": ("inpaint", "area"),
    "mask_padding": ("inpaint", "padding"),
    "inpainting_fill": ("inpaint", "fill"),
    "refiner": ("refiner", "mode"),
    "refiner_switch_at": ("refiner", "switch_at"),
    "refiner_strength": ("refiner", "strength"),
}
GROUPS: dict[str, type] = {"image": ImageOptions, "inpaint": InpaintOptions, "refiner": RefinerOptions}


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
    sampler: str = DEFAULT_SAMPLER  # a name of sampling.SAMPLERS
    schedule: str = AUTOMATIC  # a name of sampling.SCHEDULES the sampler takes
    num_images: int = 1
    loras: tuple[tuple[str, float], ...] = ()  # (name, weight), checked against LORA_DIR
    model: str = ""  # a name from the model catalog; "" is the default model
    clip_skip: int = 1  # 1: the text encoders' usual layer; n: n - 1 layers earlier (prompt_encoding.py)
    # The prompt styles applied (names from STYLES_FILE): the prompts above already hold them
    # (applied once, before the job is queued; api/styles.py), the names say where they came from.
    styles: tuple[str, ...] = ()
    # role -> the SHA-256 of the input as stored (it waits in OUTPUT_DIR/inputs until the job
    # ends; see jobs/inputs.py): the roles of INPUT_ROLES.
    inputs: Mapping[str, str] = field(default_factory=dict)
    # field -> where a preset gave its value ("model", "lora:<name>"): the fields the request left out.
    presets: Mapping[str, str] = field(default_factory=dict)
    image: ImageOptions = ImageOptions()
    inpaint: InpaintOptions = InpaintOptions()
    refiner: RefinerOptions = RefinerOptions()

    def __post_init__(self) -> None:
        # Rebuilt from JSON (job store: lists; metadata: {name, weight}): keep hashable tuples.
        pairs = [(item["name"], item["weight"]) if isinstance(item, dict) else item for item in self.loras]
        object.__setattr__(self, "loras", tuple((str(name), float(weight)) for name, weight in pairs))
        object.__setattr__(self, "styles", tuple(str(name) for name in self.styles))
        object.__setattr__(self, "presets", {str(name): str(source) for name, source in (self.presets or {}).items()})
        unknown = set(self.inputs) - set(INPUT_ROLES)
        if unknown:
            raise ValueError(f"unknown input roles: {sorted(unknown)}")
        object.__setattr__(self, "inputs", {role: sha256 for role, sha256 in self.inputs.items() if sha256})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GenerationParams:
        """From the flat form (a validated request, a job record, a Ray request)."""
        core = {name: value for name, value in values.items() if name in _CORE_FIELDS}
        if "scheduler" in values and "sampler" not in values:  # a record of before the split
            core["sampler"], core["schedule"] = split_combined(values["scheduler"])
        groups: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
        for name, (group, attribute) in FLAT_FIELDS.items():
            if name in values:
                groups[group][attribute] = values[name]
        inputs = {role.role: values[role.field] for role in INPUT_ROLES.values() if values.get(role.field)}
        return cls(**core, inputs=inputs, **{name: GROUPS[name](**given) for name, given in groups.items()})

    def to_dict(self) -> dict[str, Any]:
        """The flat form: what clients see (``GET /api/v1/jobs/{id}``) and the job store keeps."""
        values = {name: getattr(self, name) for name in _CORE_FIELDS}
        values["loras"] = [{"name": name, "weight": weight} for name, weight in self.loras]
        values["styles"] = list(self.styles)
        for role in INPUT_ROLES.values():
            values[role.field] = self.inputs.get(role.role)
        for name, (group, attribute) in FLAT_FIELDS.items():
            values[name] = getattr(getattr(self, group), attribute)
        return values

    def replace(self, **changes: Any) -> GenerationParams:
        """A copy with flat fields changed (``strength=0.5``, ``init_image=...``, ``model=...``)."""
        return GenerationParams.from_dict({**self.to_dict(), **changes})

    @property
    def mode(self) -> str:
        """``txt2img``, ``img2img`` or ``inpaint``: the first mode whose input roles the request has."""
        return next(mode for mode, roles in MODE_ROLES.items() if roles <= self.inputs.keys())

    @property
    def total_steps(self) -> int:
        """Denoising steps that really run (about; the engine's plan counts them exactly): image to
        image skips the first ``1 - strength`` of them; the refiner's steps are added."""
        base = self.steps if self.mode == "txt2img" else denoising_steps(self.steps, self.image.strength)
        if self.refiner.mode == "image":
            base += denoising_steps(self.steps, self.refiner.strength)
        return timesteps_run(self.sampler, base)  # ensemble: the same schedule, split between the two models

    @property
    def unet_passes(self) -> int:
        """UNet passes per step: 2 with classifier-free guidance (the prompt and the negative one),
        1 at guidance 1 or below, where diffusers runs the prompt alone."""
        return 2 if self.guidance_scale > 1 else 1

    @property
    def pixels(self) -> int:
        """Pixels the job makes (all its images): what its cost scales with."""
        return self.width * self.height * self.num_images


_CORE_FIELDS = tuple(
    f.name for f in dataclasses.fields(GenerationParams) if f.name not in ("inputs", *GROUPS)
)

# mode -> the input roles it needs, most specific first (the first match is the request's mode).
MODE_ROLES: dict[str, frozenset[str]] = {
    "inpaint": frozenset({"init", "mask"}),
    "img2img": frozenset({"init"}),
    "txt2img": frozenset(),
}


def denoising_steps(steps: int, strength: float) -> int:
    """The steps diffusers runs for ``steps`` at ``strength`` (its ``get_timesteps``)."""
    return min(int(steps * strength), steps)
