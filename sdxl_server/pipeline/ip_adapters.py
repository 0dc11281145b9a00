"""IP-Adapters on the pipeline through diffusers (``load_ip_adapter`` / ``set_ip_adapter_scale``):
the job's adapters loaded before it runs, and unloaded when the next job uses none, so that job's
image is the one a server that never loaded one makes (the UNet's own attention processors are
put back, whatever the memory options chose).

A unit's ``start``/``end`` (fractions of the steps) are applied between steps: its scale is its
weight on step ``i`` of ``n`` when ``start <= i / n < end`` and 0 elsewhere (diffusers skips an
adapter at scale 0), set by :class:`ScaleSchedule` from the pipeline's step-end callback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ValidationFailed
from ..params import GenerationParams, IpAdapterUnit
from .ip_adapter_files import ENCODER_FOLDER, IpAdapterCatalog

log = logging.getLogger(__name__)


class IpAdapters:
    """Which IP-Adapters the running pipeline has loaded, and the change to a job's set."""

    def __init__(self, catalog: IpAdapterCatalog) -> None:
        self.catalog = catalog
        self.loaded: tuple[str, ...] = ()
        self._processors: dict[str, Any] | None = None  # the UNet's own, while adapters replace them

    def apply(self, pipe: Any, units: Sequence[IpAdapterUnit]) -> bool:
        """``pipe`` with exactly the units' adapters at their weights; True when the set changed
        (pipelines made from ``pipe`` before must be made again: the image encoder came or went)."""
        names = tuple(unit.name for unit in units)
        changed = names != self.loaded
        if changed and self.loaded:
            self.unload(pipe)
        if changed and names:
            self._load(pipe, names)
        if names:
            pipe.set_ip_adapter_scale([unit.weight for unit in units])
        return changed

    def _load(self, pipe: Any, names: tuple[str, ...]) -> None:
        self.catalog.check(list(names))
        self._processors = dict(pipe.unet.attn_processors)
        try:
            pipe.load_ip_adapter(str(self.catalog.root), subfolder="", weight_name=[f"{name}.safetensors" for name in names],
                                 image_encoder_folder=ENCODER_FOLDER)
        except (RuntimeError, ValueError, KeyError) as exc:  # shapes of another model family
            self.unload(pipe)
            message = f"IP-Adapter {', '.join(names)} does not fit the running model: {str(exc)[:200]}"
            raise ValidationFailed(f"ip_adapter: {message}", fields={"ip_adapter": [message]}) from exc
        self.loaded = names
        log.info("loaded IP-Adapter %s", ", ".join(names))

    def unload(self, pipe: Any) -> None:
        """The adapters and their image encoder gone, the UNet's own attention processors back."""
        if hasattr(pipe, "unload_ip_adapter"):
            pipe.unload_ip_adapter()
        if self._processors is not None:
            pipe.unet.set_attn_processor(self._processors)
        log.info("unloaded IP-Adapter %s", ", ".join(self.loaded) or "(partly loaded)")
        self.loaded, self._processors = (), None

    def forget(self) -> None:
        """The pipeline is gone (a reload): nothing is loaded."""
        self.loaded, self._processors = (), None


def reference_images(params: GenerationParams, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers' ``ip_adapter_image`` argument for every pass of a job with IP-Adapter units (their
    reference images, input roles ``ip0``...): ``{}`` for a job without."""
    if not params.ip.units:
        return {}
    return {"ip_adapter_image": [inputs[f"ip{index}"] for index in range(len(params.ip.units))]}


def scales_at(units: Sequence[IpAdapterUnit], fraction: float) -> list[float]:
    """Each unit's scale on the step that starts at ``fraction`` of the steps: its weight inside
    ``[start, end)``, else 0."""
    return [unit.weight if unit.start <= fraction < unit.end else 0.0 for unit in units]


@dataclass
class ScaleSchedule:
    """The adapters' scales step by step, for units that act on part of the steps only."""

    units: tuple[IpAdapterUnit, ...]
    _set: list[float] = field(default_factory=list)  # the scales the UNet has now

    @classmethod
    def of(cls, units: Sequence[IpAdapterUnit]) -> ScaleSchedule | None:
        """The schedule of ``units``; None when every unit acts on every step (its weight, set by
        :meth:`IpAdapters.apply`, stays)."""
        if all(unit.start <= 0 and unit.end >= 1 for unit in units):
            return None
        return cls(tuple(units))

    @contextlib.contextmanager
    def held(self, pipe: Any) -> Iterator[None]:
        """The first step's scales while the pipeline runs; the weights again after it."""
        self._scale(pipe, scales_at(self.units, 0.0))
        try:
            yield
        finally:
            self._scale(pipe, [unit.weight for unit in self.units])

    def step_end(self, pipe: Any, index: int) -> None:
        """After step ``index`` of the running call: the next step's scales."""
        self._scale(pipe, scales_at(self.units, (index + 1) / max(int(pipe.num_timesteps), 1)))

    def _scale(self, pipe: Any, scales: list[float]) -> None:
        if scales != self._set:  # only when a unit starts or stops (a compiled UNet sees few changes)
            pipe.set_ip_adapter_scale(scales)
            self._set = scales
