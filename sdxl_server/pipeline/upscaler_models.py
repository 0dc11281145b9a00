"""Upscaler weights read with spandrel (the library ComfyUI and Forge use): a ``.pth`` or
``.safetensors`` file's architecture (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, ...) and scale are
detected from its state dict.

spandrel declares torchvision as a dependency, but only two architectures use it (LaMa, an
inpainter, and RestoreFormer, a face restorer; neither is an upscaler), and only when they run.
The torchvision wheel the package index serves is built for CUDA torch: beside a CPU torch it
fails at import, and transformers and diffusers, which import torchvision when it is present,
fail with it. So the CPU install leaves torchvision out (``pip install --no-deps spandrel``), and
here spandrel is imported with a stand-in for those two imports when torchvision is absent; the
stand-in is removed again at once, so nothing else sees a ``torchvision`` module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".pth", ".safetensors")
INSTALL_HINT = "pip install --no-deps 'spandrel>=0.4.2,<0.5' einops (CPU) or pip install '.[upscale]' (CUDA)"


class SpandrelMissing(RuntimeError):
    """spandrel is not installed: model upscalers cannot be read (the built-in ones still work)."""


def _needs_torchvision(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("this spandrel architecture needs torchvision, which is not installed")


def _stand_in_name(name: str) -> Any:
    if name.startswith("__"):  # a module's own attributes (``__file__``...): absent, as inspect expects
        raise AttributeError(name)
    return _needs_torchvision


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """``torchvision.transforms.functional`` as a module whose every name refuses to run, for the
    length of one import."""
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    stand_ins = {name: types.ModuleType(name) for name in names}
    stand_ins["torchvision.transforms.functional"].__getattr__ = _stand_in_name  # type: ignore[method-assign]
    stand_ins["torchvision"].transforms = stand_ins["torchvision.transforms"]  # type: ignore[attr-defined]
    stand_ins["torchvision.transforms"].functional = stand_ins["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name in names:
            if sys.modules.get(name) is stand_ins[name]:
                del sys.modules[name]


def import_spandrel() -> Any:
    """The spandrel module, with or without torchvision; :class:`SpandrelMissing` when absent."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    if importlib.util.find_spec("spandrel") is None:
        raise SpandrelMissing(f"spandrel is not installed ({INSTALL_HINT})")
    if importlib.util.find_spec("torchvision") is not None:
        import spandrel

        return spandrel
    with _torchvision_stand_in():
        import spandrel
    return spandrel


@dataclass(frozen=True)
class Identity:
    """What a file holds: the architecture spandrel found and its scale."""

    architecture: str
    scale: int


def load_descriptor(path: Path) -> Any:
    """The file's spandrel ``ImageModelDescriptor`` on the CPU, in eval mode. Raises ``ValueError``
    with the reason for a file that is not a single-image upscaler."""
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_file(str(path))
    except spandrel.UnsupportedModelError as exc:
        raise ValueError("spandrel does not recognise its architecture (not an upscaler, or an unsupported one)") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(f"a {descriptor.architecture.name} model is not a single-image upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ValueError(f"it takes {descriptor.input_channels} channels and makes {descriptor.output_channels} (RGB upscalers take and make 3)")
    if descriptor.scale < 1:
        raise ValueError(f"its scale is {descriptor.scale}")
    return descriptor.eval()


def identify(path: Path) -> Identity:
    """The architecture and scale of the upscaler in ``path`` (its weights read once, then dropped)."""
    descriptor = load_descriptor(path)
    return Identity(descriptor.architecture.name, int(descriptor.scale))
