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
# Hires fix's latent upscalers, as A1111 names them (the latents interpolated; pipeline/hires_upscale.py);
# its pixel upscalers are the upscaler catalog's (pipeline/upscaler_catalog.py).
LATENT_UPSCALERS = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                    "Latent (nearest)", "Latent (nearest-exact)")
HIRES_SCALE_MAX = 4.0


@dataclass(frozen=True)
class InputRole:
    """One kind of input image a request may carry: its role, the flat field that names it (a
    request's field, the job record's and, with ``_sha256``, the metadata's) and the PIL mode
    the pipeline reads it in."""

    role: str
    field: str
    image_mode: str
    listed: bool = True  # in the flat form when unused (null) too; the many control roles only when used


# Every input role: storage, holds, sweeps, recovery, Ray and the metadata iterate this table.
# ControlNet units a request may carry at most (MAX_CONTROLNETS chooses fewer): each unit's control
# map is an input role of its own, ``control0`` ... (field ``control0_image``).
MAX_CONTROL_UNITS = 8
# IP-Adapter units a request may carry; each one's reference image is input role ``ip{i}``.
MAX_IP_ADAPTERS = 4
IP_ADAPTER_WEIGHT_MAX = 2.0

INPUT_ROLES: dict[str, InputRole] = {
    "init": InputRole("init", "init_image", "RGB"),
    "mask": InputRole("mask", "mask", "L"),
    **{f"control{i}": InputRole(f"control{i}", f"control{i}_image", "RGB", listed=False) for i in range(MAX_CONTROL_UNITS)},
    **{f"ip{i}": InputRole(f"ip{i}", f"ip_adapter{i}_image", "RGB", listed=False) for i in range(MAX_IP_ADAPTERS)},
    "upscale": InputRole("upscale", "upscale_image", "RGB"),  # an upscale job's image (no generation)
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


# ControlNet's control modes (the extension's names in the metadata and its A1111 API's numbers).
CONTROL_MODES = {0: "balanced", 1: "prompt", 2: "controlnet"}
CONTROL_MODE_LABELS = {"balanced": "Balanced", "prompt": "My prompt is more important",
                       "controlnet": "ControlNet is more important"}
CONTROL_WEIGHT_MAX = 2.0
CONTROL_RESIZE_LABELS = ("Just Resize", "Crop and Resize", "Resize and Fill")  # the extension's names of RESIZE_MODES


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit: the model (a name from CONTROLNET_DIR), the preprocessor that made its
    control map from the client's image (``module``; the map itself is the input role
    ``control{index}``), how strongly and over which fraction of the steps it acts, and its control
    mode. ``type`` is a ControlNet-Union model's control type ("" for other models)."""

    model: str
    module: str = "none"
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    control_mode: str = "balanced"
    resize_mode: int = 1
    type: str = ""
    processor_res: int | None = None
    threshold_a: float | None = None
    threshold_b: float | None = None


@dataclass(frozen=True)
class ControlOptions:
    """The request's ControlNet units, in order (unit ``i``'s control map is input role ``control{i}``)."""

    units: tuple[ControlUnit, ...] = ()

    def __post_init__(self) -> None:
        # Rebuilt from JSON (a job record, the metadata, a Ray request): dicts become units.
        units = tuple(unit if isinstance(unit, ControlUnit) else ControlUnit(**unit) for unit in self.units)
        object.__setattr__(self, "units", units)


@dataclass(frozen=True)
class IpAdapterUnit:
    """One IP-Adapter unit: the adapter (a weights file's name in IP_ADAPTER_DIR), its scale, and
    the fraction of the steps it acts on (``start`` to ``end``; 0 elsewhere); its reference image
    is input role ``ip{index}``."""

    name: str
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class IpAdapterOptions:
    """The request's IP-Adapter units, in order."""

    units: tuple[IpAdapterUnit, ...] = ()

    def __post_init__(self) -> None:
        units = tuple(unit if isinstance(unit, IpAdapterUnit) else IpAdapterUnit(**unit) for unit in self.units)
        object.__setattr__(self, "units", units)

@dataclass(frozen=True)
class UpscaleOptions:
    """An upscale job: the upscaler (a built-in or a file of ``UPSCALERS_DIR``), a second one
    blended in at ``visibility_2`` (A1111's extras), and a centre crop to ``crop_width`` x
    ``crop_height`` after upscaling (0: none). The job's ``width`` x ``height`` is the upscaled size."""

    upscaler: str = "None"
    upscaler_2: str = "None"
    visibility_2: float = 0.0
    crop_width: int = 0
    crop_height: int = 0


@dataclass(frozen=True)
class HiresOptions:
    """Hires fix: after the first pass (and the refiner, as A1111 runs it), the latents or the
    image are upscaled to the target (``scale``, or ``width``/``height``: one of them 0 keeps the
    aspect, both cover then crop the centre, as A1111 does) and repainted image to image at
    ``denoise`` for ``steps`` (0: the request's) with their own prompts and sampler ("": the first
    pass's)."""

    enabled: bool = False
    scale: float = 2.0
    width: int = 0
    height: int = 0
    upscaler: str = "Latent"
    steps: int = 0
    denoise: float = 0.7
    prompt: str = ""
    negative_prompt: str = ""
    scheduler: str = ""  # the second pass's sampler, or an older combined name ("": the first pass's)
    schedule: str = ""  # its schedule type ("": the sampler's own, or the combined name's)

    def target(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(the size the first pass's result is upscaled to, the final size after the centre
        crop), in multiples of 8, for a first pass of ``width`` x ``height``."""
        if not self.width and not self.height:
            size = (_eighth(width * self.scale), _eighth(height * self.scale))
            return size, size
        if not self.height:
            size = (_eighth(self.width), _eighth(self.width * height / width))
            return size, size
        if not self.width:
            size = (_eighth(self.height * width / height), _eighth(self.height))
            return size, size
        cover = max(self.width / width, self.height / height)
        return (max(_eighth(width * cover), self.width), max(_eighth(height * cover), self.height)), (self.width, self.height)

    def pass_steps(self, steps: int) -> int:
        """The steps the second pass runs (image to image at ``denoise``)."""
        return denoising_steps(self.steps or steps, self.denoise)


def _eighth(value: float) -> int:
    return max(8, int(value) // 8 * 8)


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
    "controlnet": ("control", "units"),
    "ip_adapter": ("ip", "units"),
    "upscaler": ("upscale", "upscaler"),
    "upscaler_2": ("upscale", "upscaler_2"),
    "upscaler_2_visibility": ("upscale", "visibility_2"),
    "upscale_crop_width": ("upscale", "crop_width"),
    "upscale_crop_height": ("upscale", "crop_height"),
    "hires": ("hires", "enabled"),
    **{f"hires_{name}": ("hires", name) for name in ("scale", "width", "height", "upscaler", "steps", "denoise",
                                                      "prompt", "negative_prompt", "scheduler", "schedule")},
}
GROUPS: dict[str, type] = {
    "image": ImageOptions, "inpaint": InpaintOptions, "refiner": RefinerOptions, "control": ControlOptions,
    "ip": IpAdapterOptions, "upscale": UpscaleOptions, "hires": HiresOptions,
}


def _flat(value: Any) -> Any:
    """A group's value as JSON holds it (a tuple of units: a list of dicts)."""
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        return [dataclasses.asdict(item) for item in value]
    return list(value) if isinstance(value, tuple) else value


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
    control: ControlOptions = ControlOptions()
    ip: IpAdapterOptions = IpAdapterOptions()
    upscale: UpscaleOptions = UpscaleOptions()
    hires: HiresOptions = HiresOptions()

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
            if role.listed or role.role in self.inputs:
                values[role.field] = self.inputs.get(role.role)
        for name, (group, attribute) in FLAT_FIELDS.items():
            values[name] = _flat(getattr(getattr(self, group), attribute))
        return values

    def replace(self, **changes: Any) -> GenerationParams:
        """A copy with flat fields changed (``strength=0.5``, ``init_image=...``, ``model=...``)."""
        return GenerationParams.from_dict({**self.to_dict(), **changes})

    @property
    def mode(self) -> str:
        """``upscale``, ``txt2img``, ``img2img`` or ``inpaint``: the first mode whose input roles the request has."""
        return next(mode for mode, roles in MODE_ROLES.items() if roles <= self.inputs.keys())

    @property
    def total_steps(self) -> int:
        """Denoising steps that really run (about; the engine's plan counts them exactly): image to
        image skips the first ``1 - strength`` of them; the refiner's and hires fix's second pass's are added."""
        if self.mode == "upscale":
            return self.steps  # a guess until the job's tiles are counted (the worker reports them)
        base = self.steps if self.mode == "txt2img" else denoising_steps(self.steps, self.image.strength)
        if self.refiner.mode == "image":
            base += denoising_steps(self.steps, self.refiner.strength)
        return timesteps_run(self.sampler, base) + self.hires_steps  # ensemble: the same schedule, split between the two models

    @property
    def hires_steps(self) -> int:
        """The steps of hires fix's second pass (0 without it)."""
        return self.hires.pass_steps(self.steps) if self.hires.enabled else 0

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the images the job makes: hires fix's target, else ``width`` x ``height``."""
        return self.hires.target(self.width, self.height)[1] if self.hires.enabled else (self.width, self.height)

    def megapixel_steps(self, done: int, total: int) -> float:
        """Megapixel-steps left after ``done`` of ``total`` steps: what the time left scales with
        (hires fix's second pass runs its steps at the final size)."""
        second = min(self.hires_steps, total)
        first_left = max(0, total - second - done)
        second_left = min(second, total - done)
        width, height = self.output_size
        return (first_left * self.pixels + second_left * width * height * self.num_images) / 1e6

    def step_megapixels(self, step: int, total: int) -> float:
        """The megapixels step ``step`` (from 1) of ``total`` runs at."""
        return self.megapixel_steps(step - 1, total) - self.megapixel_steps(step, total)

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
    "upscale": frozenset({"upscale"}),
    "inpaint": frozenset({"init", "mask"}),
    "img2img": frozenset({"init"}),
    "txt2img": frozenset(),
}


def denoising_steps(steps: int, strength: float) -> int:
    """The steps diffusers runs for ``steps`` at ``strength`` (its ``get_timesteps``)."""
    return min(int(steps * strength), steps)
