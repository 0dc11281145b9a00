"""The annotator models behind the depth, normal, pose and segmentation preprocessors: loaded
from ``ANNOTATOR_DIR`` with transformers on first use (the class the folder's config names),
kept while used (least recently used unloaded first), run on ``ANNOTATOR_DEVICE`` (the CPU by
default, so they never take the GPU memory the pipeline needs) and turned into control maps by
:mod:`.annotator_maps`.

They run on the threads that preprocess a request's control images, not on the worker thread:
one lock serialises them. torch and transformers are imported on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from .annotator_files import TASKS, AnnotatorCatalog, AnnotatorModel
from .annotator_maps import depth_map, normal_map, openpose_points, pose_map, segment_map

log = logging.getLogger(__name__)

_METRIC_DEPTH = ("zoedepth",)  # model types whose depth is a distance (far is large), not inverse depth


class Annotators:
    """Runs preprocessor ``name`` on an image with the model of its folder (see :class:`~.preprocessors.Annotate`)."""

    def __init__(self, catalog: AnnotatorCatalog, device: str = "cpu", cache: int = 2) -> None:
        self.catalog = catalog
        self.device = device
        self.cache = cache
        self._loaded: OrderedDict[str, tuple[Any, Any]] = OrderedDict()  # folder -> (model, processor)
        self._lock = threading.Lock()

    def problem(self, name: str) -> str | None:
        return self.catalog.problem(name)

    def __call__(self, name: str, image: np.ndarray, threshold_a: float, threshold_b: float) -> np.ndarray:
        """``image`` (RGB, uint8) through preprocessor ``name``: its control map (RGB or grey, same size)."""
        found = self.catalog.model(name)  # LookupError: why it cannot run
        with self._lock:
            try:
                return self._run(name, found, image, threshold_a)
            except (OSError, RuntimeError, ValueError, KeyError) as exc:  # weights that do not load, or fail on this image
                raise LookupError(f"annotator model in {found.folder} failed: {str(exc)[:200]}") from exc

    def _run(self, name: str, found: AnnotatorModel, image: np.ndarray, threshold_a: float) -> np.ndarray:
        model, processor = self._model(found)
        task = TASKS[name].task
        if task == "pose":
            return _pose(model, processor, image)
        if task == "segmentation":
            return _segments(model, processor, image)
        depth = _depth(model, processor, image)
        if name == "normal_midas":
            return normal_map(depth, threshold_a)
        return depth_map(depth, metric=found.model_type in _METRIC_DEPTH)

    def _model(self, found: AnnotatorModel) -> tuple[Any, Any]:
        key = str(found.folder)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        import transformers

        started = time.perf_counter()
        model_class = getattr(transformers, found.architecture, None)
        if model_class is None:
            raise LookupError(f"{found.folder} holds a {found.architecture}, which this transformers "
                              f"({transformers.__version__}) does not have: upgrade it")
        model = model_class.from_pretrained(str(found.folder), use_safetensors=True).to(self._device()).eval()
        processor = transformers.AutoImageProcessor.from_pretrained(str(found.folder))
        while len(self._loaded) >= self.cache:
            dropped, _ = self._loaded.popitem(last=False)
            log.info("unloaded annotator %s", dropped)
        self._loaded[key] = (model, processor)
        log.info("loaded annotator %s (%s) on %s in %.2fs", found.folder.name, found.architecture, self._device(),
                 time.perf_counter() - started)
        return model, processor

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(processor: Any, model: Any, image: np.ndarray, **extra: Any) -> dict[str, Any]:
    import torch

    made = processor(images=image, return_tensors="pt", **extra)
    return {key: value.to(model.device) if isinstance(value, torch.Tensor) else value for key, value in made.items()}


def _depth(model: Any, processor: Any, image: np.ndarray) -> np.ndarray:
    """The model's depth at the image's size (float)."""
    import cv2
    import torch

    with torch.inference_mode():
        predicted = model(**_inputs(processor, model, image)).predicted_depth
    depth = predicted.squeeze().float().cpu().numpy()
    return cv2.resize(depth, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_CUBIC)


def _segments(model: Any, processor: Any, image: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        outputs = model(**_inputs(processor, model, image))
    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])[0]
    return segment_map(labels.cpu().numpy())


def _pose(model: Any, processor: Any, image: np.ndarray) -> np.ndarray:
    """One person's pose, the whole image as their box (crop the image around one person)."""
    import torch

    height, width = image.shape[:2]
    boxes = [[[0.0, 0.0, float(width), float(height)]]]
    inputs = _inputs(processor, model, image, boxes=boxes)
    experts = getattr(model.config.backbone_config, "num_experts", 1)
    if experts > 1:  # ViTPose+: the head of COCO's keypoints (its first dataset)
        inputs["dataset_index"] = torch.zeros(1, dtype=torch.long, device=model.device)
    with torch.inference_mode():
        outputs = model(**inputs)
    people = processor.post_process_pose_estimation(outputs, boxes=boxes)[0]
    drawn = [openpose_points(person["keypoints"].cpu().numpy(), person["scores"].cpu().numpy()) for person in people]
    return pose_map(drawn, (width, height))
