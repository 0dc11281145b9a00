"""The worker-thread side of a job: run the engine, then write the outputs.

Called by :class:`sdxl_server.jobs.queue.JobQueue` on its single executor thread. Knows the engine only
by its methods (so tests can wrap it) and never imports aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..params import SCHEDULERS
from .inputs import load_inputs
from .job import Job, StepReporter
from .outputs import OutputStore, params_meta


class GenerationWork:
    """Generate one job's image with ``engine`` and save it with ``store``."""

    def __init__(
        self,
        engine: Any,
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

    def __call__(self, job: Job, on_step: StepReporter, cancelled: Callable[[], bool]) -> dict[str, Any]:
        params = job.params
        started = time.time()

        def step(step: int, total: int, latents: Any) -> None:
            preview = None
            if (step % self.preview_every == 0 or step == total) and self.previews_wanted(job.id):
                from ..pipeline.preview import preview_data_url  # torch-side, on this thread only

                preview = preview_data_url(latents)
            on_step(step, total, preview)

        inputs = load_inputs(self.store.inputs, params)
        generation = self.engine.generate(params, step, cancelled, **({"inputs": inputs} if inputs else {}))
        runtime = self.engine.runtime
        common: dict[str, Any] = {
            "model_id": self.engine.model_id,
            **params_meta(params),
            "sampler_name": generation.info.get("sampler", SCHEDULERS[params.scheduler]),
            "device": runtime.device,
            "dtype": runtime.dtype,
            "attention": self.engine.options.get("attention"),
            "vae_upcast": generation.info.get("vae_upcast", False),
            **({"refiner_id": generation.info["refiner"]} if "refiner" in generation.info else {}),
            "created_at": datetime.fromtimestamp(job.created_at, timezone.utc).isoformat(timespec="milliseconds"),
            "timings": {
                "queue_s": round(started - job.created_at, 4),
                "inference_s": generation.info.get("inference_s"),
                "decode_s": generation.info.get("decode_s"),
                "total_s": round(time.time() - job.created_at, 4),
            },
        }
        seeds = generation.info.get("seeds") or [params.seed]
        metas = []
        try:
            for index, image in enumerate(generation.images):
                output_id = job.id if index == 0 else f"{job.id}-{index}"
                meta = {"id": output_id, "job_id": job.id, "index": index, **common, "seed": seeds[index]}
                self.store.write_outputs(output_id, image, meta)
                metas.append(meta)
        except BaseException:
            self.store.remove_outputs(job.id)  # a failed job leaves no image of its batch behind
            raise
        return self.store.result_of(metas)
