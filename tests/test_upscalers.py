"""Upscalers on the worker side: the catalog (built-ins, files spandrel reads, files it cannot),
the tiny upscaler, tiled against untiled, the out-of-memory tile fallback (a fault double), progress
in tiles, cancel between tiles, and a file replaced while it is in use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_server.errors import JobCancelled, Unusable
from sdxl_server.pipeline.tiling import tiles, upscale_tiled
from sdxl_server.pipeline.tiny import write_tiny_upscaler
from sdxl_server.pipeline.upscaler_catalog import UpscalerCatalog
from sdxl_server.pipeline.upscaler_models import load_descriptor
from sdxl_server.pipeline.upscalers import Upscalers


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "upscalers"
    write_tiny_upscaler(root / "tiny-2x.safetensors", scale=2)
    write_tiny_upscaler(root / "tiny-4x.pth", scale=4, seed=1)
    (root / "corrupt.pth").write_bytes(b"this is not a checkpoint")
    from safetensors.torch import save_file

    save_file({"some.layer.weight": torch.zeros(4, 4)}, str(root / "not-an-upscaler.safetensors"))
    (root / "notes.txt").write_text("ignored")
    return root


def make_upscalers(folder: Path, tile: int = 512, overlap: int = 8) -> Upscalers:
    return Upscalers(UpscalerCatalog(folder), "cpu", "float32", tile=tile, overlap=overlap)


def test_the_catalog_lists_built_ins_and_files_with_scale_and_architecture_and_broken_ones_with_why(folder):
    listed = {entry.name: entry for entry in UpscalerCatalog(folder).entries()}
    assert set(listed) == {"Lanczos", "Nearest", "tiny-2x", "tiny-4x", "corrupt", "not-an-upscaler"}
    assert (listed["tiny-2x"].scale, listed["tiny-4x"].scale) == (2, 4)
    assert listed["tiny-2x"].architecture == "RealESRGAN Compact" and listed["tiny-2x"].broken is None
    assert listed["corrupt"].broken and listed["not-an-upscaler"].broken
    assert "spandrel does not recognise" in listed["not-an-upscaler"].broken
    assert listed["Lanczos"].describe()["kind"] == "builtin"


def test_choosing_an_unknown_or_broken_upscaler_is_refused_naming_the_working_ones(folder):
    catalog = UpscalerCatalog(folder)
    with pytest.raises(Unusable) as unknown:
        catalog.lookup("ESRGAN_4x")
    assert unknown.value.status == 422 and "tiny-2x" in unknown.value.message and "Lanczos" in unknown.value.message
    with pytest.raises(Unusable) as broken:
        catalog.lookup("corrupt")
    assert "cannot be used" in broken.value.message and list(broken.value.fields) == ["upscaler"]
    assert catalog.lookup("tiny-2x.safetensors").name == "tiny-2x"  # the file's name works too


@pytest.mark.parametrize("name", ["Lanczos", "Nearest", "tiny-2x", "tiny-4x"])
def test_each_upscaler_makes_the_size_asked_for(folder, name):
    steps = []
    result = make_upscalers(folder).upscale(noise_image(40, 24), name, 3, lambda *step: steps.append(step), lambda: False)
    assert result.size == (120, 72) and result.mode == "RGB"
    assert steps and steps[-1][0] == steps[-1][1]  # progress ends at its total


def test_a_2x_model_asked_for_4x_runs_twice_counting_the_tiles_of_both_passes(folder):
    steps = []
    result = make_upscalers(folder, tile=32).upscale(noise_image(64, 32), "tiny-2x", 4, lambda *s: steps.append(s), lambda: False)
    assert result.size == (256, 128)
    assert [s[0] for s in steps] == list(range(1, 11)) and {s[1] for s in steps} == {10}  # 2 tiles, then 8


def test_tiled_upscaling_gives_the_untiled_pixels_within_rounding(folder):
    image = noise_image(100, 76, seed=3)
    whole = make_upscalers(folder, tile=512).upscale(image, "tiny-4x", 4, lambda *_: None, lambda: False)
    steps = []
    tiled = make_upscalers(folder, tile=32, overlap=8).upscale(image, "tiny-4x", 4, lambda *s: steps.append(s), lambda: False)
    assert len(steps) == 4 * 3  # 100x76 in 32 px tiles
    difference = np.abs(np.asarray(whole, dtype=np.int16) - np.asarray(tiled, dtype=np.int16))
    assert difference.max() <= 1


class RunsOutOfMemory:
    """A fault double: the real model, but a tile larger than ``limit`` pixels a side raises the
    error CUDA raises when it is out of memory."""

    def __init__(self, model, limit: int) -> None:
        self.model, self.limit, self.refused = model, limit, 0

    def __getattr__(self, name):  # scale, device, dtype, to(): the real model's
        return getattr(self.model, name)

    def __call__(self, tensor):
        if max(tensor.shape[2:]) > self.limit:
            self.refused += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(tensor)


def test_on_out_of_memory_the_tile_halves_and_the_result_is_unchanged(folder):
    model = load_descriptor(folder / "tiny-2x.safetensors")
    image = torch.rand(1, 3, 70, 90)
    whole = upscale_tiled(model, image, 2, tile=512, overlap=4, report=lambda *_: None, cancelled=lambda: False)
    double, reports, freed = RunsOutOfMemory(model, limit=40), [], []
    tiled = upscale_tiled(double, image, 2, tile=128, overlap=4, report=lambda *r: reports.append(r),
                          cancelled=lambda: False, free_memory=lambda: freed.append(1), floor=16)
    assert double.refused == 2 and len(freed) == 2  # 128 and 64 refused; 32 px tiles (40 with overlap) fit
    assert reports[-1] == (len(tiles(90, 70, 32, 4)),) * 2
    assert torch.allclose(whole, tiled, atol=1e-5)


def test_below_the_floor_the_out_of_memory_error_is_raised(folder):
    double = RunsOutOfMemory(load_descriptor(folder / "tiny-2x.safetensors"), limit=8)
    with pytest.raises(torch.OutOfMemoryError):
        upscale_tiled(double, torch.rand(1, 3, 64, 64), 2, tile=64, overlap=4, report=lambda *_: None,
                      cancelled=lambda: False, floor=32)
    assert double.refused == 2  # 64, then 32: the floor


def test_an_upscale_job_out_of_memory_even_at_the_floor_is_a_503_that_says_what_to_do(folder):
    from sdxl_server.errors import OutOfMemory
    from sdxl_server.params import GenerationParams, UpscaleOptions
    from sdxl_server.pipeline.upscale_job import run_upscale_job

    upscalers = make_upscalers(folder, tile=128)
    real = upscalers._descriptor
    upscalers._descriptor = lambda entry: RunsOutOfMemory(real(entry), limit=8)  # every tile is too large
    params = GenerationParams(prompt="", negative_prompt="", width=256, height=256, steps=1, guidance_scale=0, seed=0,
                              inputs={"upscale": "0" * 64}, upscale=UpscaleOptions("tiny-2x"))
    with pytest.raises(OutOfMemory) as refused:
        run_upscale_job(upscalers, params, {"upscale": noise_image(128, 128)}, lambda *_: None, lambda: False)
    assert refused.value.status == 503 and "256x256" in refused.value.message and "UPSCALE_TILE_OVERLAP" in refused.value.message


def test_cancel_stops_between_tiles(folder):
    steps = []
    with pytest.raises(JobCancelled):
        make_upscalers(folder, tile=16).upscale(noise_image(64, 64), "tiny-2x", 2, lambda *s: steps.append(s),
                                                lambda: len(steps) >= 3)
    assert len(steps) == 3 and steps[-1] == (3, 16)


def test_an_upscaler_replaced_on_disk_is_read_again_and_a_corrupted_one_refused_with_422(folder):
    upscalers = make_upscalers(folder)
    first = upscalers.upscale(noise_image(16, 16), "tiny-2x", 2, lambda *_: None, lambda: False)
    write_tiny_upscaler(folder / "tiny-2x.safetensors", scale=2, seed=7)  # new weights, same name
    second = upscalers.upscale(noise_image(16, 16), "tiny-2x", 2, lambda *_: None, lambda: False)
    assert first.size == second.size and first.tobytes() != second.tobytes()
    (folder / "tiny-2x.safetensors").write_bytes(b"truncated")
    with pytest.raises(Unusable) as refused:
        upscalers.upscale(noise_image(16, 16), "tiny-2x", 2, lambda *_: None, lambda: False)
    assert refused.value.status == 422


def test_the_default_install_still_imports_transformers_and_diffusers_beside_spandrel():
    """spandrel is imported without torchvision (the CPU install leaves it out): transformers and
    diffusers must still import, and no stand-in torchvision module may be left behind."""
    code = (
        "import importlib.util, sys\n"
        "from sdxl_server.pipeline.upscaler_models import import_spandrel\n"
        "spandrel = import_spandrel()\n"
        "assert 'torchvision' not in sys.modules or importlib.util.find_spec('torchvision') is not None\n"
        "import transformers, diffusers\n"
        "from transformers import CLIPTextModel\n"
        "from diffusers import StableDiffusionXLPipeline\n"
        "print(spandrel.__version__, len(spandrel.MAIN_REGISTRY))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    version, architectures = done.stdout.split()
    assert version.startswith("0.4") and int(architectures) > 30


def test_an_upscale_jobs_tiles_do_not_teach_the_step_estimate():
    from sdxl_server.jobs.eta import ThroughputEstimate
    from sdxl_server.params import GenerationParams, UpscaleOptions

    estimate = ThroughputEstimate()
    upscale = GenerationParams(prompt="", negative_prompt="", width=256, height=256, steps=1, guidance_scale=0, seed=0,
                               inputs={"upscale": "0" * 64}, upscale=UpscaleOptions("Lanczos"))
    estimate.record_step(upscale, 5.0, 1, 4)
    estimate.record_job(upscale, 20.0, 4)
    assert estimate.step_s_per_mpx is None and estimate.overhead_s_per_mpx is None
    generation = GenerationParams(prompt="a fox", negative_prompt="", width=64, height=64, steps=2, guidance_scale=5, seed=1)
    estimate.record_step(generation, 0.5, 1, 2)
    assert estimate.step_s_per_mpx == pytest.approx(0.5 / (64 * 64 / 1e6))
