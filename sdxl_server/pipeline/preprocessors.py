"""ControlNet preprocessors: an image -> its control map (no torch; the API runs them off the loop).

The ones that need no weights run here, written as the sd-webui-controlnet extension writes them
(OpenCV and numpy), so a map made here is the map the extension makes: ``none`` (the image is a
control map already), ``canny``, ``invert``, ``tile_resample``, ``lineart_standard`` and
``binary``. The depth, normal, pose and segmentation ones run an annotator model of
``ANNOTATOR_DIR`` (:mod:`.annotators`, reached through the :class:`Annotate` protocol, so this
module needs no torch) and are listed as unavailable, with the reason, while their folder has no
model; the rest are listed with the reason they cannot run. Each takes the image as RGB, optionally brought to ``resolution`` pixels on its
short side first (the extension's ``processor_res``), and returns an RGB map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Threshold:
    """One of a preprocessor's two numbers (``threshold_a`` / ``threshold_b``), as the extension names them."""

    name: str
    default: float
    minimum: float
    maximum: float

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "default": self.default, "min": self.minimum, "max": self.maximum}


class Annotate(Protocol):
    """The annotator models (:class:`~.annotators.Annotators`): why a preprocessor that needs one
    cannot run, and running it on an RGB image (its map, the same size)."""

    def problem(self, name: str) -> str | None: ...

    def __call__(self, name: str, image: np.ndarray, threshold_a: float, threshold_b: float) -> np.ndarray: ...


@dataclass(frozen=True)
class Preprocessor:
    """A preprocessor: what it makes, its thresholds, whether it runs an annotator model, and why
    it can never run here (None: it can, given its model when ``annotator``)."""

    name: str
    description: str
    run: Callable[[np.ndarray, float, float], np.ndarray] | None
    thresholds: tuple[Threshold, ...] = ()
    problem: str | None = None
    annotator: bool = False

    def why_not(self, annotate: Annotate | None) -> str | None:
        """Why it cannot run with these annotator models (None: it can)."""
        if self.problem is not None or not self.annotator:
            return self.problem
        return annotate.problem(self.name) if annotate is not None else "needs an annotator model, and none is loaded here"

    def describe(self, annotate: Annotate | None = None) -> dict[str, Any]:
        problem = self.why_not(annotate)
        return {"name": self.name, "description": self.description, "available": problem is None,
                "annotator": self.annotator, "problem": problem, "thresholds": [t.describe() for t in self.thresholds]}


def _cv2() -> Any:
    import cv2  # opencv-python-headless: a few MB of native code, loaded on first use

    return cv2


def _canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return _cv2().Canny(image, low, high)


def _invert(image: np.ndarray, _a: float, _b: float) -> np.ndarray:
    return 255 - image


def _tile_resample(image: np.ndarray, down: float, _b: float) -> np.ndarray:
    """Blurs detail away by resampling down ``down`` times (the tile model repaints it)."""
    height, width = image.shape[:2]
    size = (max(1, int(width / down)), max(1, int(height / down)))
    return _cv2().resize(image, size, interpolation=_cv2().INTER_AREA)


def _lineart_standard(image: np.ndarray, _a: float, _b: float) -> np.ndarray:
    """Dark lines on a light background, found as the difference from a blurred copy."""
    pixels = image.astype(np.float32)
    blurred = _cv2().GaussianBlur(pixels, (0, 0), 6.0)
    intensity = np.min(blurred - pixels, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 0.0)
    intensity *= 127
    return intensity.clip(0, 255).astype(np.uint8)


def _binary(image: np.ndarray, threshold: float, _b: float) -> np.ndarray:
    """Black and white at ``threshold`` (0 or 255: Otsu's choice), dark becoming white as the extension does."""
    cv2 = _cv2()
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if threshold in (0, 255):
        _, result = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    else:
        _, result = cv2.threshold(gray, threshold, 255, cv2.THRESH_BINARY_INV)
    return result


_NO_LOADER = "needs an annotator model this server does not load: send a ready control map with module 'none'"

PREPROCESSORS: dict[str, Preprocessor] = {
    p.name: p for p in (
        Preprocessor("none", "the image is the control map", None),
        Preprocessor("canny", "Canny edges (OpenCV)", _canny,
                     (Threshold("Canny Low Threshold", 100, 1, 255), Threshold("Canny High Threshold", 200, 1, 255))),
        Preprocessor("invert", "white lines on black from black lines on white", _invert),
        Preprocessor("tile_resample", "the image resampled down (for tile models)", _tile_resample,
                     (Threshold("Down Sampling Rate", 1.0, 1.0, 8.0),)),
        Preprocessor("lineart_standard", "line art from a white background and black lines", _lineart_standard),
        Preprocessor("binary", "black and white (threshold 0: Otsu)", _binary, (Threshold("Binary threshold", 0, 0, 255),)),
        *(Preprocessor(name, description, None, annotator=True) for name, description in (
            ("depth_midas", "depth (MiDaS / DPT)"), ("depth_zoe", "depth (ZoeDepth)"), ("depth_anything", "depth (Depth Anything)"),
            ("depth_anything_v2", "depth (Depth Anything V2)"), ("openpose", "body pose (one person; ViTPose)"),
            ("seg_ofade20k", "segmentation in ADE20K's colours"), ("seg_ufade20k", "segmentation in ADE20K's colours"),
        )),
        Preprocessor("normal_midas", "surface normals from depth_midas's depth", None,
                     (Threshold("Normal Background Threshold", 0.4, 0.0, 1.0),), annotator=True),
        *(Preprocessor(name, description, None, problem=_NO_LOADER) for name, description in (
            ("openpose_full", "body, hand and face pose"), ("softedge_hed", "soft edges (HED)"),
            ("lineart_realistic", "line art (learned)"), ("mlsd", "straight lines (M-LSD)"),
            ("normal_bae", "surface normals (BAE)"),
        )),
    )
}
# The preprocessors a request may name (those needing an annotator model are checked for it later).
AVAILABLE = tuple(name for name, p in PREPROCESSORS.items() if p.problem is None)

# The extension's module names for the same preprocessors (what A1111 clients send; its older names too).
ALIASES = {"invert (from white bg & black line)": "invert", "lineart_standard (from white bg & black line)": "lineart_standard",
           "depth": "depth_midas", "normal_map": "normal_midas", "segmentation": "seg_ufade20k"}


def runnable(annotate: Annotate | None) -> tuple[str, ...]:
    """The preprocessors that run here now: those needing no model, and those whose model is present."""
    return tuple(name for name in AVAILABLE if PREPROCESSORS[name].why_not(annotate) is None)


def thresholds(name: str, threshold_a: float | None, threshold_b: float | None) -> tuple[float, float]:
    """The thresholds a preprocessor runs with: those given, else its defaults."""
    known = PREPROCESSORS[name].thresholds
    given = (threshold_a, threshold_b)
    return tuple(  # type: ignore[return-value]
        float(given[i]) if given[i] is not None else (known[i].default if i < len(known) else 0.0) for i in range(2)
    )


def threshold_problem(name: str, threshold_a: float | None, threshold_b: float | None) -> tuple[str, str] | None:
    """``(field, message)`` when a given threshold is outside what ``name`` accepts; None when fine."""
    for field, value, limits in zip(("threshold_a", "threshold_b"), (threshold_a, threshold_b), PREPROCESSORS[name].thresholds):
        if value is not None and not limits.minimum <= value <= limits.maximum:
            return field, f"{limits.name} of {name} must be from {limits.minimum:g} to {limits.maximum:g} (got {value:g})."
    return None


def control_map(
    image: Image.Image, name: str, size: tuple[int, int], resolution: int | None = None,
    threshold_a: float | None = None, threshold_b: float | None = None, annotate: Annotate | None = None,
) -> Image.Image:
    """``image`` (RGB, already at the output's ``size``) through preprocessor ``name``: an RGB map of ``size``.
    With ``resolution``, the preprocessor sees the image with that many pixels on its short side;
    ``annotate`` runs the preprocessors that need an annotator model."""
    preprocessor = PREPROCESSORS[name]
    problem = preprocessor.why_not(annotate)
    if problem is not None:
        raise LookupError(f"preprocessor {name!r} {problem}")
    run = preprocessor.run if not preprocessor.annotator else lambda pixels, a, b: annotate(name, pixels, a, b)  # type: ignore[misc]
    if run is None:
        return image
    if resolution is not None and resolution != min(image.size):
        scale = resolution / min(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    result = run(np.asarray(image.convert("RGB")), *thresholds(name, threshold_a, threshold_b))
    made = Image.fromarray(np.ascontiguousarray(result)).convert("RGB")
    return made if made.size == size else made.resize(size, Image.BILINEAR)
