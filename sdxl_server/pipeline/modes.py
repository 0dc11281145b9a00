"""Generation modes on one set of weights: text to image on the loaded pipeline, image to image
and inpainting on pipelines made from it with diffusers' ``from_pipe`` (same modules, no extra
memory), each made once and kept while the base pipeline is.

:data:`MODES` maps each mode (``GenerationParams.mode``, chosen by the input roles a request
has) to its diffusers pipeline class and the builder of the arguments only that mode takes;
:func:`prepare_run` says, for one request, which pipeline runs, with what, and what happens to
each decoded image afterwards (inpainting's overlay).
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
    """What runs for one request: the pipeline, its mode's arguments, each image's post-processing."""

    pipe: Any
    arguments: dict[str, Any]
    finish: Callable[[Any], Any] = _identity


Arguments = Callable[[GenerationParams, Mapping[str, Any]], tuple[dict[str, Any], Callable[[Any], Any]]]


def _txt2img(params: GenerationParams, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], Callable[[Any], Any]]:
    return {"width": params.width, "height": params.height}, _identity


def _img2img(params: GenerationParams, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], Callable[[Any], Any]]:
    size = (params.width, params.height)
    image = inputs["init"] if inputs["init"].size == size else inputs["init"].resize(size)
    return {"image": image, "strength": params.image.strength}, _identity


def _inpaint(params: GenerationParams, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], Callable[[Any], Any]]:
    inpainting = Inpainting.prepare(params, inputs["init"], inputs["mask"])
    arguments = {
        "image": inpainting.pipeline_image, "mask_image": inpainting.pipeline_mask, "strength": params.image.strength,
        "width": params.width, "height": params.height,
    }
    return arguments, inpainting.finish


@dataclass(frozen=True)
class Mode:
    """A mode's diffusers pipeline class (None: the loaded base pipeline itself) and its arguments."""

    pipeline: str | None
    arguments: Arguments


MODES: dict[str, Mode] = {
    "txt2img": Mode(None, _txt2img),
    "img2img": Mode("StableDiffusionXLImg2ImgPipeline", _img2img),
    "inpaint": Mode("StableDiffusionXLInpaintPipeline", _inpaint),
}


@dataclass
class ModePipelines:
    """Each mode's pipeline, sharing ``base``'s modules."""

    base: Any
    _made: dict[str, Any] = field(default_factory=dict)

    def pipeline(self, mode: str) -> Any:
        name = MODES[mode].pipeline
        if name is None:
            return self.base
        if mode not in self._made:
            import diffusers

            made = getattr(diffusers, name).from_pipe(self.base)
            made.set_progress_bar_config(disable=True)
            self._made[mode] = made
        return self._made[mode]


def prepare_run(pipelines: ModePipelines, params: GenerationParams, inputs: Mapping[str, Any] | None) -> ModeRun:
    """The pipeline, its mode's arguments and the post-processing for ``params``; ``inputs``
    holds the decoded input images by role (``init`` RGB, ``mask`` L)."""
    mode = params.mode
    missing = sorted(set(params.inputs) - set(inputs or {}))
    if missing:
        raise ValueError(f"an {mode} job needs its input images: {', '.join(missing)}")
    arguments, finish = MODES[mode].arguments(params, inputs or {})
    return ModeRun(pipelines.pipeline(mode), arguments, finish)
