"""The worker-thread side of a job: run the engine; then, on the encoder thread, write the outputs.

Called by :class:`sdxl_server.jobs.queue.JobQueue` on its single executor thread. Knows the engine only
by its methods (so tests can wrap it) and never imports aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..params import SCHEDULERS
from .backend import InProcessBackend
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

        if self.engine.needs_switch(params.model):
            on_step(0, params.steps, ModelLoading(params.model))
            switch_started = time.perf_counter()
            self.engine.use_model(params.model)
            on_step(0, params.steps, ModelLoading(params.model, time.perf_counter() - switch_started))
        inputs = load_inputs(self.store.inputs, params)
        generation = self.engine.generate(params, step, cancelled, stop_early=job.stop_early_requested,
                                          **({"inputs": inputs} if inputs else {}))
        runtime = self.engine.runtime
        common: dict[str, Any] = {
            "model_id": self.engine.model_id,
            **params_meta(params),
            "sampler_name": generation.info.get("sampler", SCHEDULERS[params.scheduler]),
            "device": runtime.device,
            "dtype": runtime.dtype,
            "attention": self.engine.options.get("attention"),
            "vae_upcast": generation.info.get("vae_upcast", False),
            "lora_hashes": generation.info.get("lora_hashes", {}),
            **({"refiner_id": generation.info["refiner"]} if "refiner" in generation.info else {}),
            "created_at": datetime.fromtimestamp(job.created_at, timezone.utc).isoformat(timespec="milliseconds"),
        }
        timings = {
            "queue_s": round(started - job.created_at, 4),
            "inference_s": generation.info.get("inference_s"),
            "decode_s": generation.info.get("decode_s"),
        }
        seeds = generation.info.get("seeds") or [params.seed]

        def save() -> dict[str, Any]:
            """On the encoder thread: encode and write each image, then its metadata."""
            metas = []
            try:
                for index, image in enumerate(generation.images):
                    output_id = job.id if index == 0 else f"{job.id}-{index}"
                    meta = {"id": output_id, "job_id": job.id, "index": index, **common, "seed": seeds[index]}
                    if index >= generation.info.get("stopped_from", len(generation.images)):
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
                self.store.remove_outputs(job.id)  # a failed job leaves no image of its batch behind
                raise
            return self.store.result_of(metas)

        return save
