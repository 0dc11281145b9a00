"""Where and in what precision the pipeline runs: DEVICE and DTYPE resolved and checked at start-up."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from ..config import ConfigError, Settings


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision the pipeline runs, resolved from DEVICE and DTYPE."""

    device: str
    dtype: str
    cuda_available: bool

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")


def xformers_importable() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_runtime(settings: Settings) -> Runtime:
    """Resolve ``auto`` and check the device and options can work here; raise :class:`ConfigError`."""
    cuda = torch.cuda.is_available()
    device = settings.device
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if device.startswith("cuda"):
        if not cuda:
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ConfigError(
                f"DEVICE={settings.device} but CUDA is not available (torch {torch.__version__} is {build}): "
                "install a CUDA build of torch (see README) or set DEVICE=cpu"
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"DEVICE={device} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("DEVICE=mps but the MPS backend is not available: set DEVICE=cpu")
    dtype = settings.dtype
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    if settings.cpu_offload not in ("auto", "none") and not device.startswith("cuda"):
        raise ConfigError(f"CPU_OFFLOAD={settings.cpu_offload} needs CUDA (DEVICE is {device}): set CPU_OFFLOAD=none")
    if settings.attention == "xformers":
        if not device.startswith("cuda"):
            raise ConfigError(f"ATTENTION=xformers needs CUDA (DEVICE is {device}): use ATTENTION=auto or sdpa")
        if not xformers_importable():
            raise ConfigError("ATTENTION=xformers but xformers is not installed: pip install '.[xformers]' or ATTENTION=auto")
    return Runtime(device=device, dtype=dtype, cuda_available=cuda)
