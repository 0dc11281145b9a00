"""The samplers and schedule types a request may name, independent of HTTP and of torch.

A1111 1.9+ splits what older versions called a sampler ("DPM++ 2M Karras") into a **sampler**
(the solver: ``DPM++ 2M``) and a **schedule type** (which noise levels it visits: ``Karras``). This
server does the same: :data:`SAMPLERS` and :data:`SCHEDULES` are every name a request may give,
each listed only where diffusers runs it faithfully (:mod:`sdxl_server.pipeline.schedulers` maps a
pair onto a diffusers scheduler), and :data:`SAMPLERS`' ``schedules`` say which schedule types each
sampler takes. The old combined names (``dpmpp_2m_karras``, :data:`COMBINED`) still work:
:func:`split_combined` turns one into its pair.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SAMPLER = "default"  # the model's own scheduler (Euler for SDXL base)
AUTOMATIC = "automatic"  # the sampler's own spacing, as the model's scheduler config says


@dataclass(frozen=True)
class Schedule:
    """A schedule type: its A1111 label, A1111's own name (``/sdapi/v1/schedulers``) and what it is."""

    label: str
    a1111: str
    description: str


SCHEDULES: dict[str, Schedule] = {
    AUTOMATIC: Schedule("Automatic", "automatic", "the model's own timestep spacing (SDXL: leading)"),
    "uniform": Schedule("Uniform", "uniform", "timesteps evenly spaced over the whole range (diffusers' linspace)"),
    "sgm_uniform": Schedule("SGM Uniform", "sgm_uniform", "evenly spaced, ending on the last training step "
                                                          "(diffusers' trailing): what few-step models want"),
    "karras": Schedule("Karras", "karras", "Karras et al.'s noise levels (rho 7) over the model's whole range"),
    "exponential": Schedule("Exponential", "exponential", "noise levels evenly spaced in log-sigma"),
    "beta": Schedule("Beta", "beta", "noise levels from a beta(0.6, 0.6) distribution (Lee et al. 2024)"),
    "align_your_steps": Schedule("Align Your Steps", "align_your_steps",
                                 "NVIDIA's SDXL noise levels, log-linearly interpolated to the step count (as A1111)"),
}

_SPACINGS = (AUTOMATIC, "uniform", "sgm_uniform")
_SIGMAS = (*_SPACINGS, "karras", "exponential", "beta")


@dataclass(frozen=True)
class Sampler:
    """A sampler: its A1111 label, the aliases A1111 clients send, the schedule types it takes, and
    whether it is second order (two model evaluations, so ``2 * steps - 1`` timesteps, per step)."""

    label: str
    aliases: tuple[str, ...]
    schedules: tuple[str, ...]
    second_order: bool = False


SAMPLERS: dict[str, Sampler] = {
    DEFAULT_SAMPLER: Sampler("the model's own scheduler", (), _SPACINGS),
    "euler": Sampler("Euler", ("k_euler",), (*_SIGMAS, "align_your_steps")),
    "euler_a": Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), _SPACINGS),
    "heun": Sampler("Heun", ("k_heun",), _SIGMAS, second_order=True),
    "lms": Sampler("LMS", ("k_lms",), _SIGMAS),
    "dpm2": Sampler("DPM2", ("k_dpm_2",), _SIGMAS, second_order=True),
    "dpm2_a": Sampler("DPM2 a", ("k_dpm_2_a",), _SIGMAS, second_order=True),
    "dpmpp_2m": Sampler("DPM++ 2M", ("k_dpmpp_2m",), _SIGMAS),
    "dpmpp_2m_sde": Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), _SIGMAS),
    "ddim": Sampler("DDIM", ("ddim",), _SPACINGS),
    "unipc": Sampler("UniPC", ("unipc",), _SIGMAS),
    "deis": Sampler("DEIS", ("deis",), _SIGMAS),
    "lcm": Sampler("LCM", ("k_lcm",), (AUTOMATIC,)),
    "tcd": Sampler("TCD", ("tcd",), (AUTOMATIC,)),
}

# The old combined names of this server's API (before schedules were their own field).
COMBINED: dict[str, tuple[str, str]] = {
    "dpmpp_2m_karras": ("dpmpp_2m", "karras"),
    "dpmpp_2m_sde_karras": ("dpmpp_2m_sde", "karras"),
}


def timesteps_run(sampler: str, steps: int) -> int:
    """The model evaluations (progress steps) ``steps`` of ``sampler`` take."""
    return 2 * steps - 1 if SAMPLERS[sampler].second_order and steps > 1 else steps


def split_combined(name: str) -> tuple[str, str]:
    """``(sampler, schedule)`` for a sampler name of the old API (``dpmpp_2m_karras``) or a new one."""
    return COMBINED.get(name, (name, AUTOMATIC))


def sampler_names() -> list[str]:
    """Every name the old ``scheduler`` field takes: the samplers and the combined names."""
    return [*SAMPLERS, *COMBINED]


def combined_label(name: str) -> str:
    """The label of a name the older field takes ("DPM++ 2M Karras" for ``dpmpp_2m_karras``)."""
    sampler, schedule = split_combined(name)
    return SAMPLERS[sampler].label + ("" if schedule == AUTOMATIC else f" {SCHEDULES[schedule].label}")


def schedule_problem(sampler: str, schedule: str) -> str | None:
    """Why ``sampler`` cannot run with ``schedule`` (None when it can)."""
    if sampler not in SAMPLERS:
        return f"unknown sampler {sampler[:40]!r}"
    if schedule not in SCHEDULES:
        return f"unknown schedule {schedule[:40]!r}"
    if schedule not in SAMPLERS[sampler].schedules:
        takes = ", ".join(SAMPLERS[sampler].schedules)
        return f"sampler {sampler!r} does not run schedule {schedule!r} faithfully; it takes {takes}"
    return None


def label(sampler: str, schedule: str) -> tuple[str, str]:
    """A1111's ``Sampler`` and ``Schedule type`` words for a pair (the metadata's)."""
    return SAMPLERS[sampler].label, SCHEDULES[schedule].label
