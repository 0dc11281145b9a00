"""An annotator model's output made into the control map a ControlNet reads (numpy and OpenCV,
no torch), as the sd-webui-controlnet extension draws them: depth as grey (near is bright),
normals from the depth's slopes, segments in ADE20K's colours, and poses as OpenPose's
coloured skeleton on black."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

KEYPOINT_THRESHOLD = 0.3  # keypoints scored below this are left out of a pose (OpenPose's own cut)


def _cv2() -> Any:
    import cv2  # opencv-python-headless, loaded on first use

    return cv2


def depth_map(depth: np.ndarray, metric: bool) -> np.ndarray:
    """A depth model's output (``metric``: distance, else relative inverse depth) as grey, near
    bright: relative depth stretched to 0..255; metric depth inverted between its 2nd and 85th
    percentiles (as the extension shows ZoeDepth's)."""
    depth = depth.astype(np.float64)
    if metric:
        low, high = np.percentile(depth, 2), np.percentile(depth, 85)
        scaled = 1.0 - (depth - low) / max(high - low, 1e-8)
    else:
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / max(high - low, 1e-8)
    return (scaled * 255.0).clip(0, 255).astype(np.uint8)


def normal_map(depth: np.ndarray, background: float) -> np.ndarray:
    """Surface normals (RGB) from relative inverse depth, flat where the depth is below
    ``background`` (0..1 of its range: the extension's Normal Background Threshold)."""
    cv2 = _cv2()
    depth = depth.astype(np.float32)
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    z = np.full_like(x, np.pi * 2.0)
    relative = (depth - depth.min()) / max(float(depth.max() - depth.min()), 1e-8)
    x[relative < background] = 0
    y[relative < background] = 0
    normal = np.stack([x, y, z], axis=2)
    normal /= np.sqrt(np.sum(normal ** 2, axis=2, keepdims=True))
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


# ADE20K's 150 classes' colours in class order, as MMSegmentation (and the ControlNet seg models) use them.
ADE20K_PALETTE = np.array([
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80], [140, 140, 140],
    [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70],
    [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3], [0, 102, 200],
    [61, 230, 250], [255, 6, 51], [11, 102, 255], [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220],
    [255, 9, 92], [112, 9, 255], [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10],
    [7, 255, 255], [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255], [140, 140, 140],
    [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0], [153, 255, 0], [0, 0, 255],
    [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255], [11, 200, 200], [255, 82, 0], [0, 255, 245],
    [0, 61, 255], [0, 255, 112], [0, 255, 133], [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0],
    [0, 143, 255], [51, 255, 0], [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0],
    [0, 255, 153], [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194], [0, 255, 82],
    [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255], [0, 255, 163], [255, 153, 0],
    [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255], [163, 255, 0], [255, 235, 0], [8, 184, 170],
    [133, 0, 255], [0, 255, 92], [184, 0, 255], [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112],
    [92, 255, 0], [0, 224, 255], [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0],
    [255, 0, 163], [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255], [255, 255, 0],
    [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0], [173, 0, 255], [0, 245, 255],
    [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255], [184, 255, 0], [0, 133, 255], [255, 214, 0],
    [25, 194, 194], [102, 255, 0], [92, 0, 255],
], dtype=np.uint8)


def segment_map(labels: np.ndarray) -> np.ndarray:
    """A class index per pixel (ADE20K's order) as the class colours."""
    return ADE20K_PALETTE[labels.astype(np.int64) % len(ADE20K_PALETTE)]


# OpenPose's 18 body keypoints, each as COCO's 17 number it (the neck, 1, is between the shoulders).
_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
          (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
            (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
            (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
STICK_WIDTH = 4


def openpose_points(keypoints: np.ndarray, scores: np.ndarray) -> list[tuple[float, float] | None]:
    """COCO's 17 keypoints (x, y) of one person as OpenPose's 18 (None: below the threshold)."""
    if len(keypoints) != len(scores) or len(keypoints) != 17:
        raise ValueError(f"a pose model of {len(keypoints)} keypoints, not COCO's 17")
    seen = [tuple(map(float, point)) if score >= KEYPOINT_THRESHOLD else None for point, score in zip(keypoints, scores)]
    points: list[tuple[float, float] | None] = []
    for coco in _FROM_COCO:
        if coco is not None:
            points.append(seen[coco])
        elif seen[5] is not None and seen[6] is not None:  # the neck: between the shoulders
            points.append(((seen[5][0] + seen[6][0]) / 2, (seen[5][1] + seen[6][1]) / 2))
        else:
            points.append(None)
    return points


def pose_map(people: Sequence[Sequence[tuple[float, float] | None]], size: tuple[int, int]) -> np.ndarray:
    """The people's OpenPose keypoints drawn as the extension draws them: coloured limbs (ellipses
    at 60% brightness) and joints on black, ``size`` = (width, height)."""
    cv2 = _cv2()
    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for points in people:
        for index, (start, end) in enumerate(_LIMBS):
            a, b = points[start], points[end]
            if a is None or b is None:
                continue
            centre = (int((a[0] + b[0]) / 2), int((a[1] + b[1]) / 2))
            length = math.hypot(a[0] - b[0], a[1] - b[1])
            angle = math.degrees(math.atan2(a[1] - b[1], a[0] - b[0]))
            polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in _COLOURS[index]])
        for index, point in enumerate(points):
            if point is not None:
                cv2.circle(canvas, (int(point[0]), int(point[1])), 4, _COLOURS[index], thickness=-1)
    return canvas
