"""IP-Adapters on the pipeline through diffusers (``load_ip_adapter`` / ``set_ip_adapter_scale``):
the job's adapters loaded before it runs, and unloaded when the next job uses none, so that job's
image is the one a server that never loaded one makes (the UNet's own attention processors are
put back, whatever the memory options chose)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..errors import ValidationFailed
from ..params import IpAdapterUnit
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
