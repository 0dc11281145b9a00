"""A (sampler, schedule) pair of :mod:`sdxl_server.sampling` as a diffusers scheduler.

:func:`make_scheduler` is the one place a pair becomes a scheduler: the base pass, the refiner and
any second pass call it with the model's own scheduler. Schedules map onto diffusers' options:
``uniform`` is ``timestep_spacing="linspace"``, ``sgm_uniform`` is ``"trailing"``; Karras,
exponential and beta sigmas are diffusers' ``use_*_sigmas`` over the model's whole noise range (the
linspace timesteps reach from the first training step to the last, so sigma_min and sigma_max are
the model's, as in k-diffusion and A1111); Align Your Steps is A1111's definition
(:func:`align_your_steps_sigmas`), given to Euler as its sigmas.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..sampling import AUTOMATIC, DEFAULT_SAMPLER, SAMPLERS, SCHEDULES

# NVIDIA's Align Your Steps noise levels for SDXL (10 steps), as A1111's sd_schedulers.py has them.
AYS_SDXL_SIGMAS = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def _sampler_table() -> dict[str, tuple[Any, dict[str, Any]]]:
    import diffusers as d

    dpm = d.DPMSolverMultistepScheduler
    return {
        "euler": (d.EulerDiscreteScheduler, {}),
        "euler_a": (d.EulerAncestralDiscreteScheduler, {}),
        "heun": (d.HeunDiscreteScheduler, {}),
        "lms": (d.LMSDiscreteScheduler, {}),
        "dpm2": (d.KDPM2DiscreteScheduler, {}),
        "dpm2_a": (d.KDPM2AncestralDiscreteScheduler, {}),
        "dpmpp_2m": (dpm, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "dpmpp_2m_sde": (dpm, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        "ddim": (d.DDIMScheduler, {}),
        "unipc": (d.UniPCMultistepScheduler, {}),
        "deis": (d.DEISMultistepScheduler, {}),
        "lcm": (d.LCMScheduler, {}),
        "tcd": (d.TCDScheduler, {}),
    }


_SIGMA_OPTIONS = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas", "beta": "use_beta_sigmas"}
_SPACING = {"uniform": "linspace", "sgm_uniform": "trailing"}


def schedule_options(schedule: str) -> dict[str, Any]:
    """The diffusers config options of ``schedule`` (any sampler that takes it)."""
    options: dict[str, Any] = {name: False for name in _SIGMA_OPTIONS.values()}
    if schedule in _SPACING:
        options["timestep_spacing"] = _SPACING[schedule]
    if schedule in _SIGMA_OPTIONS:
        options.update({_SIGMA_OPTIONS[schedule]: True, "timestep_spacing": "linspace"})
    return options


def align_your_steps_sigmas(steps: int) -> list[float]:
    """A1111's Align Your Steps sigmas for SDXL: the table log-linearly interpolated to ``steps``
    noise levels, then 0 (``steps + 1`` values)."""
    table = np.array(AYS_SDXL_SIGMAS)
    xs = np.linspace(0, 1, len(table))
    ys = np.log(table[::-1])
    interpolated = np.exp(np.interp(np.linspace(0, 1, steps), xs, ys))[::-1]
    return [*map(float, interpolated), 0.0]


def _align_your_steps(base: type) -> type:
    class AlignYourSteps(base):  # type: ignore[misc, valid-type]
        """``base`` that visits A1111's Align Your Steps sigmas for any step count."""

        def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None:
            if num_inference_steps is not None and not kwargs.get("sigmas") and not kwargs.get("timesteps"):
                super().set_timesteps(device=device, sigmas=align_your_steps_sigmas(num_inference_steps))
            else:
                super().set_timesteps(num_inference_steps, device=device, **kwargs)

    AlignYourSteps.__name__ = AlignYourSteps.__qualname__ = f"AlignYourSteps{base.__name__}"
    return AlignYourSteps


def make_scheduler(sampler: str, schedule: str, model_scheduler: Any) -> Any:
    """A new scheduler running ``sampler`` with ``schedule`` (names of :mod:`sdxl_server.sampling`,
    a pair it lists), built from ``model_scheduler``'s config (the model's own scheduler: its
    training noise schedule and prediction type). ``default`` keeps the model's own class."""
    if schedule not in SAMPLERS[sampler].schedules:
        raise ValueError(f"sampler {sampler!r} does not take schedule {schedule!r}")
    if sampler == DEFAULT_SAMPLER:
        cls, overrides = type(model_scheduler), {}
    else:
        cls, overrides = _sampler_table()[sampler]
    if schedule == AUTOMATIC and sampler == DEFAULT_SAMPLER:
        return model_scheduler
    config = {key: value for key, value in model_scheduler.config.items() if not key.startswith("_")}
    options = {} if schedule in (AUTOMATIC, "align_your_steps") else schedule_options(schedule)
    if schedule == "align_your_steps":
        cls = _align_your_steps(cls)
    return cls.from_config({**config, **overrides, **options})


# Schedulers a model may ship with that no request names: labelled for the metadata only.
_OTHER_LABELS = {"PNDMScheduler": "PNDM"}


def sampler_label(sampler: str, scheduler: Any) -> str:
    """A1111's sampler word for the metadata ("Euler", "DPM++ 2M", ...): for ``default``, the
    label of the first sampler that uses the model's scheduler class."""
    if sampler != DEFAULT_SAMPLER:
        return SAMPLERS[sampler].label
    cls = type(scheduler)
    named = next((SAMPLERS[n].label for n, (c, _) in _sampler_table().items() if c is cls), None)
    return named or _OTHER_LABELS.get(cls.__name__, cls.__name__)


def schedule_label(schedule: str) -> str:
    return SCHEDULES[schedule].label
