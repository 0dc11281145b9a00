"""Generation modes on one set of weights: text to image on the loaded pipeline, image to image
and inpainting on pipelines made from it with diffusers' ``from_pipe`` (same modules, no extra
memory), each made once and kept while the base pipeline is.

:func:`prepare_run` says, for one request, which pipeline runs, the arguments only its mode takes,
and what happens to each decoded image afterwards (inpainting's overlay).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..params import GenerationParams
from .inpaint import Inpainting


class _NoEmptyCastWarnings(logging.Filter):
    """``from_pipe`` and the inpainting VAE's upcast cast whole models, and diffusers warns each
    time even when no module needs keeping in float32 (``[]``): noise in the log on every request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_NoEmptyCastWarnings())


def _identity(image: Any) -> Any:
    return image


@dataclass
class ModeRun:
    """What runs for one request."""

    pipe: Any
    arguments: dict[str, Any]
    finish: Callable[[Any], Any] = _identity
    refiner: Any = None  # the refiner pipeline, when the request asks for it
    plan: Any = None  # its RefinerPlan


@dataclass
class ModePipelines:
    """The image-to-image and inpainting pipelines sharing ``base``'s modules."""

    base: Any
    _made: dict[str, Any] = field(default_factory=dict)

    def pipeline(self, mode: str) -> Any:
        if mode == "txt2img":
            return self.base
        if mode not in self._made:
            from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

            cls = StableDiffusionXLImg2ImgPipeline if mode == "img2img" else StableDiffusionXLInpaintPipeline
            made = cls.from_pipe(self.base)
            made.set_progress_bar_config(disable=True)
            self._made[mode] = made
        return self._made[mode]


def prepare_run(pipelines: ModePipelines, params: GenerationParams, inputs: Mapping[str, Any] | None) -> ModeRun:
    """The pipeline, its mode's arguments and the post-processing for ``params``; ``inputs``
    holds the decoded ``init_image`` (RGB) and ``mask`` (L) its hashes name."""
    mode = params.mode
    pipe = pipelines.pipeline(mode)
    if mode == "txt2img":
        return ModeRun(pipe, {"width": params.width, "height": params.height})
    if not inputs or inputs.get("init_image") is None:
        raise ValueError(f"an {mode} job needs its input image")
    image = inputs["init_image"]
    if mode == "img2img":
        size = (params.width, params.height)
        image = image if image.size == size else image.resize(size)
        return ModeRun(pipe, {"image": image, "strength": params.strength})
    inpainting = Inpainting.prepare(params, image, inputs["mask"])
    arguments = {
        "image": inpainting.pipeline_image, "mask_image": inpainting.pipeline_mask, "strength": params.strength,
        "width": params.width, "height": params.height,
    }
    return ModeRun(pipe, arguments, inpainting.finish)
