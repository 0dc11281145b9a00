"""The samplers a request may name, as diffusers schedulers, and their A1111-style labels."""

from __future__ import annotations

from typing import Any

from ..params import SCHEDULERS


def _scheduler_table() -> dict[str, tuple[Any, dict[str, Any]]]:
    from diffusers import (
        DDIMScheduler,
        DEISMultistepScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    dpm = DPMSolverMultistepScheduler
    return {
        "euler": (EulerDiscreteScheduler, {}),
        "euler_a": (EulerAncestralDiscreteScheduler, {}),
        "dpmpp_2m": (dpm, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "dpmpp_2m_karras": (dpm, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
        "dpmpp_2m_sde": (dpm, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        "dpmpp_2m_sde_karras": (dpm, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
        "ddim": (DDIMScheduler, {}),
        "unipc": (UniPCMultistepScheduler, {}),
        "deis": (DEISMultistepScheduler, {}),
    }


# Schedulers a model may ship with that no request can name: labelled for the metadata only.
_OTHER_LABELS = {"PNDMScheduler": "PNDM", "LMSDiscreteScheduler": "LMS"}


def make_scheduler(name: str, config: Any) -> Any:
    """The scheduler ``name`` (a key of :data:`~sdxl_server.params.SCHEDULERS` but "default"),
    built from the model's own scheduler ``config``."""
    cls, overrides = _scheduler_table()[name]
    return cls.from_config(config, **overrides)


def scheduler_named(name: str, default: Any, made: dict[str, Any]) -> Any:
    """The scheduler for the sampler ``name`` of a request (either pass's): ``default`` (the
    model's own) for "default", else one made from its config, kept in ``made`` by name."""
    if name == "default":
        return default
    if name not in made:
        made[name] = make_scheduler(name, default.config)
    return made[name]


def sampler_label(name: str, scheduler: Any) -> str:
    """A1111-style sampler name for the metadata ("Euler", "DPM++ 2M Karras", ...): for
    "default", the label of the first named sampler that uses the model's scheduler class."""
    if name != "default":
        return SCHEDULERS[name]
    cls = type(scheduler)
    named = next((SCHEDULERS[n] for n, (c, _) in _scheduler_table().items() if c is cls), None)
    return named or _OTHER_LABELS.get(cls.__name__, cls.__name__)
