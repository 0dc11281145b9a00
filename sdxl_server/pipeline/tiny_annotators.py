"""Tiny random-weights annotator models for the depth, pose and segmentation preprocessors, built
by the project for tests and the offline demo: each saved with ``save_pretrained`` (config,
safetensors, image processor) in the ANNOTATOR_DIR subfolder its preprocessor reads, and loaded
from there by :mod:`.annotators` like a real one. Their maps are noise: only the plumbing is real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _depth() -> tuple[Any, Any]:
    """A Depth Anything with a 4-layer, 32-wide DINOv2 backbone, fed 56-pixel images."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=56,
                            patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 16, 16, 16],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    processor = DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14)
    return DepthAnythingForDepthEstimation(config), processor


def _segmentation() -> tuple[Any, Any]:
    """A two-block SegFormer with ADE20K's 150 classes, fed 64-pixel images."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
                             strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=150)
    return SegformerForSemanticSegmentation(config), SegformerImageProcessor(size={"height": 64, "width": 64})


def _pose() -> tuple[Any, Any]:
    """A two-layer ViTPose with COCO's 17 keypoints, fed 64x48 crops."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     image_size=[64, 48], patch_size=[16, 16], out_indices=[2])
    config = VitPoseConfig(backbone_config=backbone, num_labels=17, use_simple_decoder=True)
    return VitPoseForPoseEstimation(config), VitPoseImageProcessor(size={"height": 64, "width": 48})


BUILDERS = {"depth": _depth, "segmentation": _segmentation, "pose": _pose}
# The folders the tiny set fills (normal_midas reads depth_midas's).
TINY_FOLDERS = {"depth_midas": "depth", "depth_anything_v2": "depth", "openpose": "pose", "seg_ofade20k": "segmentation"}


def write_tiny_annotator(folder: Path, task: str, seed: int = 0) -> Path:
    """A tiny annotator model of ``task`` ("depth", "segmentation", "pose") saved at ``folder``."""
    torch.manual_seed(seed)
    model, processor = BUILDERS[task]()
    model.eval().save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def write_tiny_annotators(root: Path) -> Path:
    """The tiny set in ``root`` (an ANNOTATOR_DIR): a model in each folder of :data:`TINY_FOLDERS`."""
    for index, (name, task) in enumerate(TINY_FOLDERS.items()):
        if not (root / name / "config.json").is_file():
            write_tiny_annotator(root / name, task, seed=index)
    return root
