"""Where a model comes from: the seed's resolution order as plain path logic (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import DEFAULT_HUB_MODEL, DEFAULT_HUB_REFINER, Settings

TINY_MODEL_NAME = "tiny"

_FIX = (
    "put a diffusers SDXL folder (with model_index.json) in MODEL_DIR, point MODEL_ID at a local "
    "folder or .safetensors file, or set MODEL_ID=tiny to run offline with random weights"
)


@dataclass(frozen=True)
class ModelSource:
    """Which model to load and where it comes from.

    ``kind`` is ``tiny``, ``hub``, ``folder`` or ``single_file``; ``origin`` is the setting that
    chose it (``MODEL_ID``, ``MODEL_DIR``, or ``default``).
    """

    kind: str
    location: str
    origin: str
    vae: str | None = None

    @property
    def model_id(self) -> str:
        return TINY_MODEL_NAME if self.kind == "tiny" else self.location


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~", "\\")) or (len(value) > 1 and value[1] == ":") or Path(value).exists()


def _single_file_in(folder: Path) -> tuple[Path | None, Path | None]:
    """The seed's loose layout: an SDXL checkpoint (and perhaps a VAE) as .safetensors in a folder."""
    files = sorted(folder.glob("*.safetensors"))
    vaes = [f for f in files if "vae" in f.name.lower()]
    checkpoints = [f for f in files if f not in vaes and "refiner" not in f.name.lower()]
    if len(checkpoints) > 1:
        checkpoints = [f for f in checkpoints if "base" in f.name.lower()] or checkpoints[:0]
    return (checkpoints[0] if len(checkpoints) == 1 else None), (vaes[0] if len(vaes) == 1 else None)


def _local_source(path: Path, origin: str, vae: str | None) -> ModelSource | None:
    if path.is_file() or path.suffix in (".safetensors", ".ckpt"):
        return ModelSource("single_file", str(path), origin, vae)
    if (path / "model_index.json").is_file():
        return ModelSource("folder", str(path), origin, vae)
    if path.is_dir():
        checkpoint, folder_vae = _single_file_in(path)
        if checkpoint is not None:
            return ModelSource("single_file", str(checkpoint), origin, vae or (str(folder_vae) if folder_vae else None))
    return None


def resolve_model_source(settings: Settings) -> ModelSource:
    """The seed's order: ``MODEL_ID``, then the local ``MODEL_DIR``, then the Hub default."""
    vae = settings.vae_id
    model_id = settings.model_id
    if model_id:
        if model_id.lower() == TINY_MODEL_NAME:
            return ModelSource("tiny", TINY_MODEL_NAME, "MODEL_ID", vae)
        if _looks_local(model_id):
            path = Path(model_id).expanduser()
            return _local_source(path, "MODEL_ID", vae) or ModelSource("folder", str(path), "MODEL_ID", vae)
        return ModelSource("hub", model_id, "MODEL_ID", vae)
    local = _local_source(settings.model_dir, "MODEL_DIR", vae) if settings.model_dir.is_dir() else None
    return local or ModelSource("hub", DEFAULT_HUB_MODEL, "default", vae)


def _refiner_in(folder: Path) -> Path | None:
    """The seed's layout: a ``*refiner*`` checkpoint (or diffusers folder) beside the base."""
    found = sorted(p for p in folder.iterdir() if "refiner" in p.name.lower()
                   and (p.suffix == ".safetensors" or (p / "model_index.json").is_file()))
    return found[0] if len(found) == 1 else None


def resolve_refiner_source(settings: Settings) -> ModelSource | None:
    """``REFINER_ID``, else a ``*refiner*`` checkpoint in ``MODEL_DIR``; None when there is none."""
    refiner_id = settings.refiner_id
    if refiner_id:
        if refiner_id.lower() == TINY_MODEL_NAME:
            return ModelSource("tiny", TINY_MODEL_NAME, "REFINER_ID")
        if _looks_local(refiner_id):
            path = Path(refiner_id).expanduser()
            kind = "single_file" if path.is_file() or path.suffix in (".safetensors", ".ckpt") else "folder"
            return ModelSource(kind, str(path), "REFINER_ID")
        return ModelSource("hub", refiner_id, "REFINER_ID")
    if not settings.model_dir.is_dir():
        return None
    found = _refiner_in(settings.model_dir)
    if found is None:
        return None
    return ModelSource("single_file" if found.is_file() else "folder", str(found), "MODEL_DIR")


def _hint(source: ModelSource, setting: str, config: str | None, what: str, hub: str, otherwise: str) -> str:
    """What to do when ``source`` does not load: for a single file, its configs (``setting``,
    whose value is ``config``) first; ``otherwise`` in every case."""
    if source.kind != "single_file":
        return otherwise
    if not config:
        return (f"a single-file {what} needs its component configs: set {setting} to a local diffusers "
                f"folder of one (or allow the download of {hub}'s configs); or {otherwise}")
    return f"check that {setting} ({config}) is the diffusers folder or Hub id of an SDXL {what}; or {otherwise}"


def fix_hint(source: ModelSource, settings: Settings) -> str:
    """What to do when the model ``source`` does not load."""
    return _hint(source, "MODEL_CONFIG", settings.model_config, "checkpoint", DEFAULT_HUB_MODEL, _FIX)


def refiner_fix_hint(source: ModelSource, settings: Settings) -> str:
    """What to do when the refiner ``source`` does not load."""
    return _hint(source, "REFINER_CONFIG", settings.refiner_config, "refiner", DEFAULT_HUB_REFINER,
                 "point REFINER_ID at an SDXL refiner (Hub id, diffusers folder or .safetensors), or REFINER_ID=tiny offline")
