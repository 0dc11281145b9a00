"""Generation modes on one set of weights: text to image on the loaded pipeline, image to image
and inpainting on pipelines made from it with diffusers' ``from_pipe`` (same modules, no extra
memory), each made once and kept while the base pipeline is.

:data:`MODES` maps each mode (``GenerationParams.mode``, chosen by the input roles a request
has) to its diffusers pipeline class and the builder of the arguments only that mode takes;
:func:`prepare_run` says, for one request, which pipeline runs, with what, and what happens to
each decoded image afterwards (inpainting's overlay).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..params import GenerationParams
from .controlnets import check_fits, check_union, control_arguments, control_modes, union_types
from .inpaint import Inpainting
from .ip_adapters import ScaleSchedule, reference_images


class ControlNetSource(Protocol):
    """Where a run finds a unit's loaded ControlNet (:class:`.controlnets.ControlNetCache`)."""

    def get(self, name: str, index: int = 0, base: Mapping[str, Any] | None = None) -> Any:
        """The ControlNet ``name`` (unit ``index`` names it), loaded; ``base`` is the running
        UNet's config (a single file's config is completed from it)."""

    def on_device(self, nets: Any) -> contextlib.AbstractContextManager[None]:
        """``nets`` on the device while the block runs."""


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
    """What runs for one request: the pipeline, its mode's arguments, each image's post-processing,
    what is held around the pipeline call (the ControlNet units' control modes, the IP-Adapters'
    first scales) and what is done after each step (``step_end(pipe, index)``: the IP-Adapters'
    scales of the next step, see :class:`.ip_adapters.ScaleSchedule`)."""

    pipe: Any
    arguments: dict[str, Any]
    finish: Callable[[Any], Any] = _identity
    around: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    step_end: Callable[[Any, int], None] | None = None


@dataclass
class ModeArguments:
    """A mode's own arguments, what happens to each decoded image, and how a control map (at the
    job's size) is brought to the pipeline's image (inpainting's "only masked" crop)."""

    arguments: dict[str, Any]
    finish: Callable[[Any], Any] = _identity
    fit: Callable[[Any], Any] = _identity


Arguments = Callable[[GenerationParams, Mapping[str, Any]], ModeArguments]


def _txt2img(params: GenerationParams, inputs: Mapping[str, Any]) -> ModeArguments:
    return ModeArguments({"width": params.width, "height": params.height})


def _img2img(params: GenerationParams, inputs: Mapping[str, Any]) -> ModeArguments:
    size = (params.width, params.height)
    image = inputs["init"] if inputs["init"].size == size else inputs["init"].resize(size)
    return ModeArguments({"image": image, "strength": params.image.strength})


def _inpaint(params: GenerationParams, inputs: Mapping[str, Any]) -> ModeArguments:
    inpainting = Inpainting.prepare(params, inputs["init"], inputs["mask"])
    arguments = {
        "image": inpainting.pipeline_image, "mask_image": inpainting.pipeline_mask, "strength": params.image.strength,
        "width": params.width, "height": params.height,
    }
    return ModeArguments(arguments, inpainting.finish, inpainting.fit)


@dataclass(frozen=True)
class Mode:
    """A mode's diffusers pipeline class (None: the loaded base pipeline itself), its arguments,
    and its ControlNet pipeline class with the argument its control images go in."""

    pipeline: str | None
    arguments: Arguments
    control_pipeline: str
    control_argument: str
    union_pipeline: str  # with ControlNet-Union models (their control images always go in ``control_image``)


MODES: dict[str, Mode] = {
    "txt2img": Mode(None, _txt2img, "StableDiffusionXLControlNetPipeline", "image",
                    "StableDiffusionXLControlNetUnionPipeline"),
    "img2img": Mode("StableDiffusionXLImg2ImgPipeline", _img2img, "StableDiffusionXLControlNetImg2ImgPipeline",
                    "control_image", "StableDiffusionXLControlNetUnionImg2ImgPipeline"),
    "inpaint": Mode("StableDiffusionXLInpaintPipeline", _inpaint, "StableDiffusionXLControlNetInpaintPipeline",
                    "control_image", "StableDiffusionXLControlNetUnionInpaintPipeline"),
}


def _from_pipe(name: str, base: Any, **components: Any) -> Any:
    import diffusers

    made = getattr(diffusers, name).from_pipe(base, **components)
    made.set_progress_bar_config(disable=True)
    return made


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
            self._made[mode] = _from_pipe(name, self.base)
        return self._made[mode]

    def control_pipeline(self, mode: str, nets: list[Any], union: bool) -> Any:
        """The mode's ControlNet (or ControlNet-Union) pipeline with ``nets`` (several: diffusers'
        multi-ControlNet), on the base's modules; made per request (cheap: no weights are copied),
        so no cached pipeline keeps an unloaded ControlNet alive."""
        if len(nets) == 1:
            controlnet = nets[0]
        elif union:
            from diffusers.models.controlnets.multicontrolnet_union import MultiControlNetUnionModel

            controlnet = MultiControlNetUnionModel(nets)
        else:
            from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

            controlnet = MultiControlNetModel(nets)
        name = MODES[mode].union_pipeline if union else MODES[mode].control_pipeline
        return _from_pipe(name, self.base, controlnet=controlnet)


def prepare_run(
    pipelines: ModePipelines, params: GenerationParams, inputs: Mapping[str, Any] | None,
    controlnets: ControlNetSource | None = None,
) -> ModeRun:
    """The pipeline, its mode's arguments and the post-processing for ``params``; ``inputs``
    holds the decoded input images by role (``init`` RGB, ``mask`` L, ``control0``... RGB maps);
    ``controlnets`` gives the loaded ControlNet of a unit's model."""
    mode = params.mode
    missing = sorted(set(params.inputs) - set(inputs or {}))
    if missing:
        raise ValueError(f"an {mode} job needs its input images: {', '.join(missing)}")
    made = MODES[mode].arguments(params, inputs or {})
    made.arguments.update(reference_images(params, inputs or {}))  # of the IP-Adapters loaded for this job
    if not params.control.units:
        run = ModeRun(pipelines.pipeline(mode), made.arguments, made.finish)
    elif controlnets is None:
        raise ValueError("this engine has no ControlNets")
    else:
        run = _control_run(pipelines, params, made, controlnets, inputs or {})
    schedule = ScaleSchedule.of(params.ip.units)
    if schedule is None:
        return run
    around = run.around
    return dataclasses.replace(run, around=lambda: _held(around(), schedule.held(run.pipe)), step_end=schedule.step_end)


def _control_run(pipelines: ModePipelines, params: GenerationParams, made: ModeArguments, controlnets: ControlNetSource,
                 inputs: Mapping[str, Any]) -> ModeRun:
    """The run of a request with ControlNet units: their ControlNets loaded and checked against the
    running model, their control maps fitted to the pipeline's image, their arguments."""
    mode, units = params.mode, params.control.units
    nets = [controlnets.get(unit.model, index, pipelines.base.unet.config) for index, unit in enumerate(units)]
    check_fits(nets, pipelines.base.unet)
    union = check_union(nets, units)
    maps = [made.fit(inputs[f"control{index}"]) for index in range(len(units))]
    if union:
        images = {"control_image": maps, "control_mode": union_types(nets, units)}  # one per unit (diffusers nests them)
    else:
        images = {MODES[mode].control_argument: maps[0] if len(maps) == 1 else maps}
    arguments = {**made.arguments, **images, **control_arguments(units)}
    return ModeRun(pipelines.control_pipeline(mode, nets, union), arguments, made.finish,
                   lambda: _held(controlnets.on_device(nets), control_modes(nets, units, params)))


@contextlib.contextmanager
def _held(*managers: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield
