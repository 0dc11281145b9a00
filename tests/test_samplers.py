"""Samplers and schedule types on the tiny model: every listed pair runs, the noise levels each
schedule visits are those of its definition (k-diffusion's and A1111's formulas, diffusers' own
spacings), and guidance at or below 1 runs one UNet pass per step (counted, not timed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdxl_server.config import Settings
from sdxl_server.jobs.eta import ThroughputEstimate
from sdxl_server.params import GenerationParams
from sdxl_server.sampling import SAMPLERS, SCHEDULES

STEPS = 4
PAIRS = [(sampler, schedule) for sampler, spec in SAMPLERS.items() for schedule in spec.schedules]


@pytest.fixture(scope="module")
def engine(tiny_cache, tmp_path_factory):
    from sdxl_server.pipeline.engine import Engine

    root = tmp_path_factory.mktemp("samplers")
    settings = Settings(model_id="tiny", tiny_cache=tiny_cache, output_dir=root / "out", model_dir=root / "none",
                        styles_file=root / "styles.csv", embeddings_dir=root / "emb", torch_threads=1)
    engine = Engine(settings)
    engine.load()
    return engine


class UnetCalls:
    """Every UNet call of a generation: its timestep and how many latents it denoised at once."""

    def __init__(self, unet) -> None:
        self.calls: list[tuple[float, int]] = []
        self.handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self.calls.append((float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep), sample.shape[0]))

    def __enter__(self) -> UnetCalls:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def run(engine, steps: int = STEPS, **fields):
    params = GenerationParams(prompt="a fox", negative_prompt="", width=64, height=64, steps=steps,
                              guidance_scale=fields.pop("guidance_scale", 7.0), seed=5, **fields)
    progress: list[tuple[int, int]] = []
    with UnetCalls(engine.pipe.unet) as unet:
        generation = engine.generate(params, lambda step, total, _: progress.append((step, total)), lambda: False)
    return params, generation, unet.calls, progress


@pytest.mark.parametrize(("sampler", "schedule"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_every_listed_sampler_and_schedule_runs(engine, sampler, schedule):
    params, generation, calls, progress = run(engine, sampler=sampler, schedule=schedule)
    pixels = np.asarray(generation.images[0], dtype=np.float32)
    assert pixels.shape == (64, 64, 3) and np.isfinite(pixels).all() and pixels.std() > 0
    # Progress counts what ran: one report per UNet call, and as many as the job said it would.
    assert len(calls) == params.total_steps == progress[-1][1] == progress[-1][0]
    if sampler != "default":
        assert generation.info["sampler"] == SAMPLERS[sampler].label


def _sigmas(engine, sampler: str, schedule: str, steps: int = 10) -> np.ndarray:
    from sdxl_server.pipeline.schedulers import make_scheduler

    scheduler = make_scheduler(sampler, schedule, engine.pipe.scheduler if sampler == "default" else engine._default_scheduler)
    scheduler.set_timesteps(steps)
    sigmas = np.asarray(scheduler.sigmas, dtype=np.float64)
    return sigmas[np.r_[True, sigmas[1:] != sigmas[:-1]]]  # a second-order sampler visits each level twice


def _model_sigmas(engine) -> np.ndarray:
    alphas = np.asarray(engine._default_scheduler.alphas_cumprod, dtype=np.float64)
    return ((1 - alphas) / alphas) ** 0.5


def test_karras_and_exponential_are_k_diffusions_over_the_models_whole_range(engine):
    sigma_min, sigma_max = _model_sigmas(engine)[0], _model_sigmas(engine)[-1]
    ramp = np.linspace(0, 1, 10)
    rho = 7.0  # k_diffusion.sampling.get_sigmas_karras
    karras = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    exponential = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), 10))  # get_sigmas_exponential
    for sampler in ("euler", "dpmpp_2m", "heun", "unipc"):
        np.testing.assert_allclose(_sigmas(engine, sampler, "karras")[:10], karras, rtol=1e-3)
        np.testing.assert_allclose(_sigmas(engine, sampler, "exponential")[:10], exponential, rtol=1e-3)
    assert _sigmas(engine, "euler", "karras")[-1] == 0


def test_align_your_steps_is_a1111s_table(engine):
    table = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]  # A1111 sd_schedulers.py
    np.testing.assert_allclose(_sigmas(engine, "euler", "align_your_steps", 11), [*table, 0.0], rtol=1e-4)
    four = _sigmas(engine, "euler", "align_your_steps", 4)
    xs, ys = np.linspace(0, 1, len(table)), np.log(table[::-1])  # loglinear_interp
    np.testing.assert_allclose(four, [*np.exp(np.interp(np.linspace(0, 1, 4), xs, ys))[::-1], 0.0], rtol=1e-4)
    _, _, calls, _ = run(engine, steps=4, sampler="euler", schedule="align_your_steps")
    assert calls[0][0] == pytest.approx(999, abs=1)  # sigma 14.615 is the last training step


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp_2m"])
def test_spacings_are_diffusers_own(engine, sampler):
    from sdxl_server.pipeline.schedulers import _sampler_table

    cls, overrides = _sampler_table()[sampler]
    for schedule, spacing in (("uniform", "linspace"), ("sgm_uniform", "trailing"), ("automatic", "leading")):
        reference = cls.from_config(engine._default_scheduler.config, **overrides, timestep_spacing=spacing)
        reference.set_timesteps(STEPS)
        _, _, calls, _ = run(engine, sampler=sampler, schedule=schedule)
        assert [t for t, _ in calls] == [float(t) for t in reference.timesteps], schedule
    _, _, calls, _ = run(engine, sampler=sampler, schedule="sgm_uniform")
    assert calls[0][0] == 999  # trailing starts on the last training step: what few-step models need


def test_beta_is_diffusers_beta_sigmas(engine):
    from diffusers import EulerDiscreteScheduler

    reference = EulerDiscreteScheduler.from_config(engine._default_scheduler.config, use_beta_sigmas=True,
                                                   timestep_spacing="linspace")
    reference.set_timesteps(10)
    np.testing.assert_allclose(_sigmas(engine, "euler", "beta"), np.asarray(reference.sigmas), rtol=1e-6)
    assert not np.allclose(_sigmas(engine, "euler", "beta"), _sigmas(engine, "euler", "karras"))


def test_lcm_and_tcd_run_their_own_schedules(engine):
    from diffusers import LCMScheduler, TCDScheduler

    for sampler, cls in (("lcm", LCMScheduler), ("tcd", TCDScheduler)):
        reference = cls.from_config(engine._default_scheduler.config)
        reference.set_timesteps(STEPS)
        _, generation, calls, _ = run(engine, sampler=sampler, guidance_scale=1.0)
        assert [t for t, _ in calls] == [float(t) for t in reference.timesteps]
        assert generation.info["sampler"] == SAMPLERS[sampler].label


def test_guidance_1_runs_one_unet_pass_per_step(engine):
    params_cfg, _, with_cfg, progress_cfg = run(engine, guidance_scale=7.0)
    params_one, _, without, progress_one = run(engine, guidance_scale=1.0)
    passes_cfg, passes_one = sum(rows for _, rows in with_cfg), sum(rows for _, rows in without)
    assert passes_cfg == 2 * STEPS and passes_one == STEPS  # the negative prompt's pass is skipped
    assert (params_cfg.unet_passes, params_one.unet_passes) == (2, 1)
    assert [p for p, _ in progress_cfg if p] == [p for p, _ in progress_one if p] == list(range(1, STEPS + 1))
    # The ETA counts passes: a measured step at guidance 1 predicts a step with guidance at twice its time.
    eta = ThroughputEstimate()
    eta.record_step(params_one, 0.5)
    assert eta.job_seconds(params_cfg) == pytest.approx(2 * eta.job_seconds(params_one))


def test_schedules_change_the_image(engine):
    images = {schedule: np.asarray(run(engine, sampler="dpmpp_2m", schedule=schedule)[1].images[0], dtype=np.int16)
              for schedule in ("automatic", "karras", "exponential", "sgm_uniform")}
    assert len({image.tobytes() for image in images.values()}) == len(images)
    assert set(SCHEDULES) == {s for spec in SAMPLERS.values() for s in spec.schedules}  # each listed one runs somewhere


async def test_every_api_takes_the_pair(client):
    """Ours (sampler + schedule), OpenAI's (the same as extensions) and A1111's (sampler_name + scheduler)."""
    import json

    resp = await client.post("/api/v1/generate", json={"prompt": "a fox", "steps": 2, "sampler": "euler",
                                                        "schedule": "align_your_steps"})
    meta = (await resp.json())["meta"]
    assert (meta["sampler_name"], meta["schedule_type"]) == ("Euler", "Align Your Steps")

    resp = await client.post("/v1/images/generations", json={"prompt": "a fox", "size": "64x64", "steps": 2,
                                                               "sampler": "tcd", "guidance_scale": 1.0})
    assert resp.status == 200, await resp.text()
    job = (await (await client.get("/api/v1/jobs")).json())["jobs"][0]
    assert (job["params"]["sampler"], job["params"]["schedule"], job["total_steps"]) == ("tcd", "automatic", 2)

    body = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64}
    for sampler, scheduler, expected, note in (
        ("Euler", "Align Your Steps", ("Euler", "Align Your Steps"), None),
        ("DPM++ 2M", None, ("DPM++ 2M", "Karras"), None),  # A1111 1.9's Automatic for DPM++ 2M
        ("DPM++ 2M", "Align Your Steps", ("DPM++ 2M", "Automatic"), "does not run faithfully"),
        ("Euler a", "normal", ("Euler a", "Uniform"), "'normal' is not available here"),
        ("k_lcm", "sgm_uniform", ("LCM", "Automatic"), "does not run faithfully"),
    ):
        answer = await (await client.post("/sdapi/v1/txt2img", json={**body, "sampler_name": sampler, "scheduler": scheduler})).json()
        info = json.loads(answer["info"])
        extra = info["extra_generation_params"]
        assert (info["sampler_name"], extra.get("Schedule type", "Automatic")) == expected, (sampler, scheduler)
        assert (note is None and "Server notes" not in extra) or note in extra["Server notes"], extra
