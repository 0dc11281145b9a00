"""MEMORY_PROFILE: which memory settings fit the GPU, decided from its total memory alone.

A pure function of the GPU's size and the settings (no torch here), so it is tested with any
size. SDXL in float16 holds about 6.5 GiB of weights: the UNet 4.8 GiB, the two text encoders
1.5 GiB, the VAE 0.2 GiB. At 1024x1024 the UNet's activations add about 1 GiB and an untiled VAE
decode about 3 GiB at its peak, and the CUDA context itself takes 0.3-0.5 GiB. Stored in float8
(diffusers' layerwise casting: each layer's weights are cast to DTYPE just for its forward), the
UNet takes 2.4 GiB and the text encoders 0.75 GiB.

- ``high``: everything resident in DTYPE, no tiling: the fastest, for cards from 14 GiB.
- ``8gb``: the UNet stored in float8 and VAE tiling; the text encoders stay resident (no transfers
  per job, which the float8 UNet makes room for): for 7-14 GiB (8, 10 and 12 GB cards).
- ``6gb``: the UNet and text encoders stored in float8, VAE tiling, and the text encoders kept on
  the CPU, visiting the GPU only to encode a prompt: for 5-7 GiB (6 GB cards).
- ``low``: group offloading with CUDA streams (the weights wait on the CPU in groups of layers,
  each copied to the GPU ahead of its use while the one before computes), float8 storage and
  tiling: below 5 GiB; slower, but it fits.

Float32 weights take twice the memory, so the thresholds double with them. Explicit
``VAE_TILING``, ``CPU_OFFLOAD``, ``TEXT_ENCODER_OFFLOAD`` and ``FP8_WEIGHTS`` override what the
profile says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Settings

GIB = 1024**3
HIGH_MIN_GIB = 14.0  # float16; weights 6.5 + activations 1 + untiled decode 3 + context and margin
EIGHT_GB_MIN_GIB = 7.0  # float16; float8 UNet 2.4 + text encoders 1.5 + VAE 0.2 + activations 1 + tiled decode + context
SIX_GB_MIN_GIB = 5.0  # float16; float8 UNet 2.4 + VAE 0.2 + activations 1 + tiled decode + context

PROFILES = {
    "high": {"vae_tiling": False, "text_encoder_offload": False, "cpu_offload": "none", "fp8": "off"},
    "8gb": {"vae_tiling": True, "text_encoder_offload": False, "cpu_offload": "none", "fp8": "unet"},
    "6gb": {"vae_tiling": True, "text_encoder_offload": True, "cpu_offload": "none", "fp8": "all"},
    "low": {"vae_tiling": True, "text_encoder_offload": False, "cpu_offload": "group", "fp8": "all"},
}
_NOTHING = {"vae_tiling": False, "text_encoder_offload": False, "cpu_offload": "none", "fp8": "off"}
# What each choice does, for /health.
EXPLAINED = {
    "vae_tiling": "the VAE decodes in 512 px tiles (its peak falls from about 3 GiB to a fraction)",
    "text_encoder_offload": "the text encoders wait on the CPU and visit the GPU only to encode a prompt",
    "fp8": {"unet": "the UNet's weights are stored in float8 and each layer computed in DTYPE (half its memory)",
            "all": "the UNet's and text encoders' weights are stored in float8 and computed in DTYPE (half their memory)"},
    "cpu_offload": {"model": "each sub-model is on the GPU only while it runs",
                    "group": "the weights wait on the CPU in groups of layers, each copied to the GPU with CUDA streams "
                             "ahead of its use",
                    "sequential": "every layer is copied to the GPU as it runs (the least memory, the slowest)"},
}


@dataclass(frozen=True)
class MemoryPlan:
    """The memory settings to apply, and why."""

    profile: str  # high, 8gb, low; "cpu" without a GPU
    reason: str
    vae_tiling: bool
    text_encoder_offload: bool
    cpu_offload: str
    fp8: str = "off"  # off, unet, all: which weights are stored in float8
    overrides: list[str] = field(default_factory=list)  # explicit settings that won over the profile

    def describe(self) -> dict[str, object]:
        return {
            "profile": self.profile, "reason": self.reason, "vae_tiling": self.vae_tiling,
            "text_encoder_offload": self.text_encoder_offload, "cpu_offload": self.cpu_offload,
            "fp8_weights": self.fp8, "overrides": self.overrides, "explained": self.explained(),
        }

    def explained(self) -> list[str]:
        """What each choice in effect does, in words."""
        said = [EXPLAINED["vae_tiling"]] if self.vae_tiling else []
        said += [EXPLAINED["text_encoder_offload"]] if self.text_encoder_offload else []
        said += [EXPLAINED["fp8"][self.fp8]] if self.fp8 != "off" else []
        said += [EXPLAINED["cpu_offload"][self.cpu_offload]] if self.cpu_offload != "none" else []
        return said or ["everything resident in DTYPE, no tiling"]


def profile_for(total_bytes: int, dtype: str) -> tuple[str, str]:
    """The fastest profile that fits a GPU of ``total_bytes``, and why."""
    scale = 2.0 if dtype == "float32" else 1.0
    total = total_bytes / GIB
    size = f"the GPU has {total:.1f} GiB"
    if total >= HIGH_MIN_GIB * scale:
        return "high", f"{size} (>= {HIGH_MIN_GIB * scale:g}): everything resident, no tiling"
    if total >= EIGHT_GB_MIN_GIB * scale:
        return "8gb", (f"{size} (>= {EIGHT_GB_MIN_GIB * scale:g}, < {HIGH_MIN_GIB * scale:g}): "
                       "float8 UNet weights, VAE tiling")
    if total >= SIX_GB_MIN_GIB * scale:
        return "6gb", (f"{size} (>= {SIX_GB_MIN_GIB * scale:g}, < {EIGHT_GB_MIN_GIB * scale:g}): "
                       "float8 UNet and text encoder weights, VAE tiling, text encoders on the CPU between prompts")
    return "low", f"{size} (< {SIX_GB_MIN_GIB * scale:g}): group offload with CUDA streams, float8 weights, VAE tiling"


def plan_memory(settings: Settings, total_bytes: int | None, dtype: str) -> MemoryPlan:
    """What ``MEMORY_PROFILE`` and the explicit settings give on a GPU of ``total_bytes``
    (None: no GPU, where everything stays in memory and offloading has no meaning)."""
    if settings.memory_profile != "auto":
        profile, reason = settings.memory_profile, f"MEMORY_PROFILE={settings.memory_profile}"
    elif total_bytes is None:
        profile, reason = "cpu", "no GPU: everything in memory"
    else:
        profile, reason = profile_for(total_bytes, dtype)
    chosen = dict(PROFILES.get(profile, _NOTHING))
    if total_bytes is None and chosen["cpu_offload"] != "none":
        chosen["cpu_offload"] = "none"
        reason += " (no CPU offload without a GPU)"
    overrides = []
    explicit = {
        "vae_tiling": (settings.vae_tiling, "VAE_TILING", {"on": True, "off": False}),
        "text_encoder_offload": (settings.text_encoder_offload, "TEXT_ENCODER_OFFLOAD", {"on": True, "off": False}),
        "cpu_offload": (settings.cpu_offload, "CPU_OFFLOAD", {v: v for v in ("none", "model", "group", "sequential")}),
        "fp8": (settings.fp8_weights, "FP8_WEIGHTS", {v: v for v in ("off", "unet", "all")}),
    }
    for name, (raw, env, values) in explicit.items():
        if raw != "auto":
            chosen[name] = values[raw]
            overrides.append(f"{env}={raw}")
    if chosen["cpu_offload"] != "none":
        chosen["text_encoder_offload"] = False  # offload moves the text encoders already
    return MemoryPlan(profile=profile, reason=reason, overrides=overrides, **chosen)


UNTILED_DECODE_GIB_PER_MPX = 3.0  # float16: an untiled VAE decode's peak per megapixel decoded


def decode_needs_tiling(pixels: int, free_bytes: int | None, dtype: str) -> bool:
    """Whether a VAE decode of ``pixels`` (the whole batch) should be tiled with ``free_bytes``
    free on the GPU (None: no GPU, where host memory is not measured): hires fix's large images
    on a card whose profile keeps the decode untiled."""
    if free_bytes is None:
        return False
    scale = 2.0 if dtype == "float32" else 1.0
    return pixels / 1e6 * UNTILED_DECODE_GIB_PER_MPX * scale * GIB > free_bytes * 0.9


REFINER_UNET_GIB = 4.2  # float16: SDXL refiner 1.0's UNet (its text encoder 2 and VAE are the base's)


def refiner_placement(total_bytes: int | None, dtype: str, cpu_offload: str) -> tuple[str, str]:
    """Where the refiner's UNet lives, and why: ``resident`` beside the base's on a GPU with room
    for both, ``swapped`` (on the GPU only while it runs, the base's UNet on the CPU meanwhile)
    on a smaller one, ``offloaded`` with the base's CPU offload, ``cpu`` without a GPU."""
    if cpu_offload != "none":
        return "offloaded", f"CPU_OFFLOAD={cpu_offload}: the refiner is offloaded like the base"
    if total_bytes is None:
        return "cpu", "no GPU"
    scale = 2.0 if dtype == "float32" else 1.0
    needed = (HIGH_MIN_GIB + REFINER_UNET_GIB) * scale
    if total_bytes / GIB >= needed:
        return "resident", f"the GPU has {total_bytes / GIB:.1f} GiB (>= {needed:g}): both UNets resident"
    return "swapped", (f"the GPU has {total_bytes / GIB:.1f} GiB (< {needed:g}): only the UNet in use on the GPU, "
                       "the other on the CPU while the refiner runs")
