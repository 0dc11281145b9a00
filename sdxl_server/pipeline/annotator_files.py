"""The annotator models in ``ANNOTATOR_DIR``: the depth, pose and segmentation models some
ControlNet preprocessors need, each a transformers folder (``config.json``, ``*.safetensors``,
``preprocessor_config.json``) in the subfolder its preprocessor names (no torch: the API lists and
checks with this module; :mod:`.annotators` loads and runs them).

A folder is usable when its config names a transformers model of the preprocessor's task (its
``architectures`` end in ``ForDepthEstimation``, ``ForSemanticSegmentation`` or
``ForPoseEstimation``), its weights are safetensors, and it has the outputs the map is drawn
from: ADE20K's 150 classes for segmentation (the ControlNet seg models read their colours),
COCO's 17 keypoints for pose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CONFIG_LIMIT = 1 << 20  # a config.json larger than this is not a model's config


@dataclass(frozen=True)
class AnnotatorTask:
    """What a preprocessor's folder must hold: a model of ``task`` (``example``: one that works,
    on the Hugging Face Hub), with ``labels`` outputs (0: any; ``labels_are`` names them)."""

    folder: str
    task: str  # "depth", "segmentation" or "pose"
    example: str
    labels: int = 0
    labels_are: str = ""


_SUFFIXES = {"depth": "ForDepthEstimation", "segmentation": "ForSemanticSegmentation", "pose": "ForPoseEstimation"}
ADE20K_CLASSES = 150
COCO_KEYPOINTS = 17
_ADE20K_EXAMPLE = "nvidia/segformer-b5-finetuned-ade-640-640 or openmmlab/upernet-convnext-small"

# Each preprocessor that runs an annotator model, and the folder of ANNOTATOR_DIR it reads
# (normal_midas reads depth_midas's model: its normals are the depth's slopes).
TASKS: dict[str, AnnotatorTask] = {
    "depth_midas": AnnotatorTask("depth_midas", "depth", "Intel/dpt-hybrid-midas"),
    "depth_zoe": AnnotatorTask("depth_zoe", "depth", "Intel/zoedepth-nyu-kitti"),
    "depth_anything": AnnotatorTask("depth_anything", "depth", "LiheYoung/depth-anything-small-hf"),
    "depth_anything_v2": AnnotatorTask("depth_anything_v2", "depth", "depth-anything/Depth-Anything-V2-Small-hf"),
    "normal_midas": AnnotatorTask("depth_midas", "depth", "Intel/dpt-hybrid-midas"),
    "openpose": AnnotatorTask("openpose", "pose", "usyd-community/vitpose-base-simple", COCO_KEYPOINTS, "COCO's 17 keypoints"),
    "seg_ofade20k": AnnotatorTask("seg_ofade20k", "segmentation", _ADE20K_EXAMPLE, ADE20K_CLASSES, "ADE20K's 150 classes"),
    "seg_ufade20k": AnnotatorTask("seg_ufade20k", "segmentation", _ADE20K_EXAMPLE, ADE20K_CLASSES, "ADE20K's 150 classes"),
}


@dataclass(frozen=True)
class AnnotatorModel:
    """A usable annotator folder: where it is, its transformers class and model type."""

    folder: Path
    architecture: str
    model_type: str


class AnnotatorCatalog:
    """The annotator folders under ``root``: which preprocessors can run, and why not."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def problem(self, name: str) -> str | None:
        """Why preprocessor ``name`` cannot run here (None: it can)."""
        try:
            self.model(name)
        except LookupError as exc:
            return str(exc)
        return None

    def usable(self) -> list[str]:
        """The preprocessors whose model is here."""
        return [name for name in TASKS if self.problem(name) is None]

    def model(self, name: str) -> AnnotatorModel:
        """The usable model of preprocessor ``name``; ``LookupError`` says why there is none."""
        task = TASKS[name]
        folder = self.root / task.folder
        wanted = f"a transformers {task.task} model (e.g. {task.example})"
        if not (folder / "config.json").is_file():
            raise LookupError(f"needs {wanted} in {folder}, which has none: put one there, "
                              "or send a ready control map with module 'none'")
        config = _read_config(folder / "config.json")
        architectures = config.get("architectures") or []
        architecture = architectures[0] if architectures and isinstance(architectures[0], str) else ""
        if not architecture.endswith(_SUFFIXES[task.task]):
            raise LookupError(f"{folder} holds {architecture or 'a model of no stated class'}, not {wanted}")
        named, counted = config.get("id2label"), config.get("num_labels")
        labels = len(named) if isinstance(named, (dict, list)) else counted if isinstance(counted, int) else 0
        if task.labels and labels != task.labels:
            raise LookupError(f"{folder} holds a model of {labels} outputs, not {task.labels_are} ({wanted})")
        if not any(folder.glob("*.safetensors")):
            raise LookupError(f"{folder} has no .safetensors weights (other weight formats are not loaded)")
        return AnnotatorModel(folder, architecture, str(config.get("model_type") or ""))


def _read_config(path: Path) -> dict[str, object]:
    if path.stat().st_size > CONFIG_LIMIT:
        raise LookupError(f"{path} is too large to be a model's config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LookupError(f"{path} cannot be read: {str(exc)[:120]}") from exc
    if not isinstance(config, dict):
        raise LookupError(f"{path} is not a model's config")
    return config
