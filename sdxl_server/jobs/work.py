"""The worker-thread side of a job: run the engine; then, on the encoder thread, write the outputs.

Called by :class:`sdxl_server.jobs.queue.JobQueue` on its single executor thread. Knows the engine only
by its methods (so tests can wrap it) and never imports aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..sampling import SAMPLERS, SCHEDULES
from .backend import Generated, InProcessBackend
from .inputs import load_inputs
from .job import Job, ModelLoading, Save, StepReporter
from .outputs import OutputStore, params_meta


class GenerationWork:
    """Generate one job's image with ``engine`` and save it with ``store``."""

    stops_early = True  # a job asked to stop early (A1111's interrupt) ends with the image so far

    def __init__(
        self,
        engine: InProcessBackend,
        store: OutputStore,
        *,
        previews_wanted: Callable[[str], bool] = lambda job_id: False,
        preview_every: int = 2,
    ) -> None:
        self.engine = engine
        self.store = store
        self.previews_wanted = previews_wanted
        self.preview_every = preview_every

    def load(self) -> None:
        self.engine.load()

    def __call__(self, job: Job, on_step: StepReporter, cancelled: Callable[[], bool]) -> Save:
        """Generate the job's images (worker thread); return how to save them (encoder thread)."""
        params = job.params
        started = time.time()
        if params.mode == "upscale":  # no model, no steps: the upscaler's tiles
            generation = self.engine.upscale(params, lambda step, total, _: on_step(step, total, None), cancelled,
                                             load_inputs(self.store.inputs, params))
            return self._saver(job, generation, self._common_meta(job, generation), self._timings(job, started, generation))
        self._switch_model(params.model, params.steps, on_step)
        inputs = load_inputs(self.store.inputs, params)
        generation = self.engine.generate(params, self._step_reporter(job, on_step), cancelled,
                                          stop_early=job.stop_early_requested, **({"inputs": inputs} if inputs else {}))
        return self._saver(job, generation, self._common_meta(job, generation), self._timings(job, started, generation))

    @staticmethod
    def _timings(job: Job, started: float, generation: Generated) -> dict[str, Any]:
        hires = generation.info.get("hires") or {}
        return {
            "queue_s": round(started - job.created_at, 4),
            "inference_s": generation.info.get("inference_s"),
            "decode_s": generation.info.get("decode_s"),
            **{f"hires_{name}": hires[name] for name in ("upscale_s", "second_pass_s") if name in hires},
        }

    def _step_reporter(self, job: Job, on_step: StepReporter) -> Callable[[int, int, Any], None]:
        """The engine's step callback: progress, and a preview every few steps for a client that wants one."""
        previews: Any = None

        def step(step: int, total: int, latents: Any) -> None:
            # Between two steps of the GPU's work: nothing here may wait for the device. Progress
            # is the step index; the latents are read only for a preview a client wants.
            nonlocal previews
            if (step % self.preview_every == 0 or step == total) and self.previews_wanted(job.id):
                if previews is None:
                    from ..pipeline.preview import LatentPreviews  # torch-side, on this thread only

                    previews = LatentPreviews()
                previews.take(latents)
            on_step(step, total, previews.ready() if previews is not None and previews.pending else None)

        return step

    def _switch_model(self, model: str, steps: int, on_step: StepReporter) -> None:
        """Switch to the job's model first if it is not the running one, telling the queue (a
        ``loading_model`` event, then how long it took)."""
        if not self.engine.needs_switch(model):
            return
        on_step(0, steps, ModelLoading(model))
        switch_started = time.perf_counter()
        self.engine.use_model(model)
        on_step(0, steps, ModelLoading(model, time.perf_counter() - switch_started))

    def _common_meta(self, job: Job, generation: Generated) -> dict[str, Any]:
        """The metadata every image of the job shares."""
        params, runtime, info = job.params, self.engine.runtime, generation.info
        return {
            "model_id": self.engine.model_id,
            **params_meta(params),
            "sampler_name": info.get("sampler", SAMPLERS[params.sampler].label),
            "schedule_type": SCHEDULES[params.schedule].label,
            "device": runtime.device,
            "dtype": runtime.dtype,
            "attention": self.engine.options.get("attention"),
            "vae_upcast": info.get("vae_upcast", False),
            "lora_hashes": info.get("lora_hashes", {}),
            **({"refiner_id": info["refiner"]} if "refiner" in info else {}),
            **({"hires_sampler_name": info["hires"]["sampler"], "image_width": info["hires"]["width"],
                "image_height": info["hires"]["height"]} if "hires" in info else {}),
            **({"warnings": list(job.warnings)} if job.warnings else {}),
            "created_at": datetime.fromtimestamp(job.created_at, timezone.utc).isoformat(timespec="milliseconds"),
        }

    def _saver(self, job: Job, generation: Generated, common: dict[str, Any], timings: dict[str, Any]) -> Save:
        """How the encoder thread writes the job's images, then their metadata."""
        seeds = generation.info.get("seeds") or [job.params.seed]
        stopped_from = generation.info.get("stopped_from", len(generation.images))

        def save() -> dict[str, Any]:
            metas = []
            try:
                for index, image in enumerate(generation.images):
                    output_id = job.id if index == 0 else f"{job.id}-{index}"
                    meta = {"id": output_id, "job_id": job.id, "index": index, **common, "seed": seeds[index]}
                    if index >= stopped_from:
                        meta["interrupted_at_step"] = generation.info["stopped_at"]  # stopped early (A1111)
                    encoding = time.perf_counter()
                    png = self.store.encode_png(image, meta)
                    meta["timings"] = {
                        **timings,
                        "encode_s": round(time.perf_counter() - encoding, 4),
                        "total_s": round(time.time() - job.created_at, 4),
                    }
                    self.store.write_outputs(output_id, png, meta)
                    metas.append(meta)
            except BaseException:
                self.store.discard_outputs(job.id)  # a failed job leaves no image of its batch behind
                raise
            return self.store.result_of(metas)

        return save
