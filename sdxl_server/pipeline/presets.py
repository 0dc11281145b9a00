"""Recommended settings that travel with a model or a LoRA, read from a sidecar file (no torch).

A model's sidecar is ``<name>.preset.json`` beside its file or folder in ``MODELS_DIR`` (or beside
``MODEL_ID``/``MODEL_DIR``'s); a LoRA's is A1111's own ``<name>.json`` beside its ``.safetensors``
(``activation text``, ``preferred weight``, ``notes``, ``sd version``, as A1111's LoRA card editor
writes it), which may carry the same recommended settings. Both are JSON objects; the settings are

``steps``, ``guidance_scale`` (or ``cfg_scale``), ``sampler``, ``schedule``, ``width``,
``height``, ``clip_skip`` and, for a model only, ``vae`` (a Hub id or a path, loaded with the model).

A sidecar that cannot be read, or holds a bad value, makes no preset: the listing says why
(``preset_problem``) and the model or LoRA works as without one. The API applies a preset to the
fields a request leaves out (:mod:`sdxl_server.api.presets`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..sampling import SAMPLERS, SCHEDULES, schedule_problem

MAX_SIDECAR = 1024 * 1024
# field -> (type, lowest, highest): what a preset may set, checked as a request's would be.
PRESET_FIELDS: dict[str, tuple[type, float, float]] = {
    "steps": (int, 1, 1000), "guidance_scale": (float, 0.0, 30.0), "width": (int, 64, 8192),
    "height": (int, 64, 8192), "clip_skip": (int, 1, 12),
}
_ALIASES = {"cfg_scale": "guidance_scale"}
A1111_LORA_FIELDS = {"activation text": "activation_text", "preferred weight": "preferred_weight",
                     "notes": "notes", "sd version": "sd_version", "negative text": "negative_text"}


@dataclass(frozen=True)
class Sidecar:
    """What a sidecar says: ``settings`` (a request's field -> value), ``vae`` and A1111's LoRA card
    fields (``about``); ``problem`` says why it was not used (then both are empty)."""

    settings: dict[str, Any]
    vae: str | None = None
    about: dict[str, Any] | None = None
    problem: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"preset": {**self.settings, **({"vae": self.vae} if self.vae else {})} or None,
                "preset_problem": self.problem, **(self.about or {})}


NO_SIDECAR = Sidecar({})


def model_sidecar_path(location: Path) -> Path:
    """``<name>.preset.json`` beside a model file or folder (``name`` without ``.safetensors``)."""
    stem = location.stem if location.suffix == ".safetensors" else location.name
    return location.with_name(f"{stem}.preset.json")


def lora_sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _read(path: Path) -> dict[str, Any] | None:
    """The sidecar's JSON object (None: no sidecar); ``ValueError`` saying what is wrong."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SIDECAR + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{path.name} unreadable: {exc.strerror or exc}") from None
    if len(raw) > MAX_SIDECAR:
        raise ValueError(f"{path.name} is larger than {MAX_SIDECAR} bytes")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path.name} is not JSON: {str(exc)[:120]}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return value


def _number(name: str, value: Any) -> int | float:
    kind, low, high = PRESET_FIELDS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low:g} to {high:g}")
    if name in ("width", "height") and int(value) % 8:
        raise ValueError(f"{name} must be a multiple of 8")
    return kind(value)


def settings_of(raw: dict[str, Any]) -> dict[str, Any]:
    """The recommended settings in a sidecar's object (other keys are left alone); ``ValueError``."""
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        name = _ALIASES.get(key, key)
        if name in PRESET_FIELDS:
            settings[name] = _number(name, value)
        elif name in ("sampler", "schedule"):
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            settings[name] = value
    if "sampler" in settings and settings["sampler"] not in SAMPLERS:
        raise ValueError(f"unknown sampler {settings['sampler'][:40]!r}")
    if "schedule" in settings and settings["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown schedule {settings['schedule'][:40]!r}")
    if "sampler" in settings and "schedule" in settings:
        problem = schedule_problem(settings["sampler"], settings["schedule"])
        if problem:
            raise ValueError(problem)
    return settings


def read_model_sidecar(location: Path) -> Sidecar:
    """The preset of the model at ``location`` (NO_SIDECAR when it has none)."""
    path = model_sidecar_path(location)
    try:
        raw = _read(path)
        if raw is None:
            return NO_SIDECAR
        vae = raw.get("vae")
        if vae is not None and not (isinstance(vae, str) and vae.strip()):
            raise ValueError("vae must be a Hub id or a path")
        return Sidecar(settings_of(raw), vae)
    except ValueError as exc:
        return Sidecar({}, problem=f"{path.name}: {exc}")


def read_lora_sidecar(path: Path) -> Sidecar:
    """A1111's card fields and the preset of the LoRA file ``path`` (NO_SIDECAR when it has none)."""
    sidecar = lora_sidecar_path(path)
    try:
        raw = _read(sidecar)
        if raw is None:
            return NO_SIDECAR
        about = {ours: raw[theirs] for theirs, ours in A1111_LORA_FIELDS.items()
                 if isinstance(raw.get(theirs), (str, int, float)) and not isinstance(raw.get(theirs), bool)}
        if "preferred_weight" in about:
            about["preferred_weight"] = float(about["preferred_weight"])
        return Sidecar(settings_of(raw), about=about)
    except (ValueError, TypeError) as exc:
        return Sidecar({}, problem=f"{sidecar.name}: {exc}")
