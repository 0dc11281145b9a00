"""The benchmark tools: the full-size model's architecture, the bench CLI end to end with the
tiny model, and the GPU check's CPU smoke mode. Structure and sanity only, never speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdxl_server.config import Settings, load_settings
from sdxl_server.tools.bench.options import SECTIONS, settings_environment
from sdxl_server.tools.bench.stats import linear_fit, percentile, summarize

ROOT = Path(__file__).resolve().parent.parent


def _env(tiny_cache: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "MODEL_ID": "tiny", "TINY_CACHE": str(tiny_cache), "TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        # our own code must not leave sockets, files or processes unclosed
        "PYTHONWARNINGS": "error::ResourceWarning",
        **extra,
    }
    for name in ("MODEL_DIR", "DEVICE", "DTYPE", "API_KEY", "OUTPUT_DIR"):
        env.pop(name, None)
    return env


# --------------------------------------------------------------------------- full-size model


def test_fullsize_parameter_counts_on_meta():
    """SDXL base 1.0's published sizes, built on the meta device (no memory, a few seconds)."""
    import torch

    from sdxl_server.pipeline.fullsize import EXPECTED_PARAMETERS, build_fullsize_pipeline, parameter_counts

    pipe = build_fullsize_pipeline("meta", torch.float16)
    counts = parameter_counts(pipe)
    assert counts == EXPECTED_PARAMETERS
    # and, independently, the rounded figures SDXL's documentation gives
    assert counts["unet"] == pytest.approx(2.567e9, rel=1e-3)
    assert counts["text_encoder"] == pytest.approx(123.06e6, rel=1e-3)
    assert counts["text_encoder_2"] == pytest.approx(694.7e6, rel=1e-3)
    assert counts["vae"] == pytest.approx(83.65e6, rel=1e-3)
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        params = list(getattr(pipe, name).parameters())
        assert {p.device.type for p in params} == {"meta"}
        assert {p.dtype for p in params} == {torch.float16}
    unet = pipe.unet.config
    assert tuple(unet.block_out_channels) == (320, 640, 1280)
    assert tuple(unet.transformer_layers_per_block) == (1, 2, 10)
    assert unet.cross_attention_dim == 2048 and unet.projection_class_embeddings_input_dim == 2816
    assert pipe.text_encoder.config.hidden_act == "quick_gelu" and pipe.text_encoder_2.config.hidden_act == "gelu"
    assert pipe.text_encoder_2.config.projection_dim == 1280
    assert pipe.vae.config.scaling_factor == 0.13025 and pipe.vae.config.force_upcast
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "leading" and pipe.scheduler.config.steps_offset == 1
    # the byte tokenizer's ids fit in CLIP's vocabulary, and its end token is the pooled one
    ids = pipe.tokenizer("a lighthouse").input_ids
    assert max(ids) < pipe.text_encoder.config.vocab_size
    assert pipe.text_encoder_2.config.eos_token_id == ids[-1]


def test_fullsize_refiner_on_meta_fits_the_base_as_the_server_pairs_them():
    """SDXL refiner 1.0's UNet (4.52 GB in float16: 2.26 B parameters), conditioned on the base's
    text encoder 2 (1280 wide) with the aesthetic score among its time ids."""
    import torch

    from sdxl_server.pipeline.fullsize import (
        EXPECTED_REFINER_UNET_PARAMETERS, build_fullsize_pipeline, build_fullsize_refiner)

    base = build_fullsize_pipeline("meta", torch.float16)
    refiner = build_fullsize_refiner("meta", torch.float16, base=base)
    assert sum(p.numel() for p in refiner.unet.parameters()) == EXPECTED_REFINER_UNET_PARAMETERS
    assert EXPECTED_REFINER_UNET_PARAMETERS * 2 == pytest.approx(4.52e9, rel=2e-3)  # the published fp16 file
    assert refiner.text_encoder_2 is base.text_encoder_2 and refiner.vae is base.vae and refiner.text_encoder is None
    config = refiner.unet.config
    assert config.cross_attention_dim == base.text_encoder_2.config.hidden_size == 1280
    assert config.projection_class_embeddings_input_dim == 5 * config.addition_time_embed_dim + 1280
    assert refiner.config.requires_aesthetics_score


# --------------------------------------------------------------------------- helpers


def test_statistics_helpers():
    assert percentile([3, 1, 2, 4], 50) == 2.5
    assert percentile([1.0], 99) == 1.0
    assert math.isnan(percentile([], 50))
    s = summarize([0.001, 0.002, 0.003], scale=1000)
    assert (s["n"], s["median"], s["min"], s["max"]) == (3, 2.0, 1.0, 3.0)
    assert summarize([])["median"] is None
    slope, intercept = linear_fit([(0, 1.0), (1, 3.0), (2, 5.0)])
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(1.0)


def test_settings_survive_the_environment(tmp_path):
    """A cold-start child reads the same settings as the parent, through the environment."""
    settings = Settings(model_id="tiny", tiny_cache=tmp_path, output_dir=tmp_path / "o", cors_origins=("http://a.test",),
                        vae_slicing=False, default_guidance=5.5)
    assert load_settings(settings_environment(settings)) == settings
    assert load_settings(settings_environment(Settings())) == Settings()


# --------------------------------------------------------------------------- the CLI


def _check_switching(result: dict, table: str) -> None:
    """The switching section: LoRA load, switch and per-step costs, and a model switch from disk and back from RAM."""
    for label in ("LoRA load", "LoRA switch", "per step, two fused", "switch to tiny-b from disk", "from RAM"):
        assert label in table, table
    lora, model = result["lora"], result["model"]
    assert lora["load_s"] > 0 and lora["switch_s"] > 0 and lora["off_s"] > 0
    assert set(lora["step_s"]) == {"none", "one_unfused", "two_unfused", "one_fused", "two_fused"}
    assert all(value > 0 for value in lora["step_s"].values())
    assert model["other"] == "tiny-b" and model["switch_from_disk_s"] > 0
    assert model["switch_back_from_ram_s"] < model["switch_from_disk_s"]  # the RAM cache skips the load


@pytest.mark.slow(90)
def test_bench_cli_end_to_end(tiny_cache, tmp_path):
    report_path = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "sdxl_server.tools.bench", "--runs", "3", "--memory-jobs", "20", "--clients", "10",
         "--progress-runs", "2", "--previews", "--health-flood", "--idle-samples", "20", "--width", "64", "--height", "64", "--steps", "3", "--webhook-jobs", "5",
         "--admission-keys", "20", "--admission-samples", "50", "--json", str(report_path)],
        cwd=tmp_path, env=_env(tiny_cache, REFINER_ID="tiny"), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout
    for title in ("server overhead", "event loop", "progress", "memory", "batch", "PNG encode", "cold start",
                  "ratio server/direct", "compile none; channels_last False; fused QKV False; memory profile cpu", "modes:",
                  "storage: one image's files", "webhook delivery after a job ends",
                  "key check + admission per request", "upscale:", "hires:"):
        assert title in table, table
    assert "FAILED" not in table

    report = json.loads(report_path.read_text())
    assert list(report["sections"]) == list(SECTIONS)
    assert report["environment"]["model_id"] == "tiny" and report["environment"]["device"] == "cpu"
    assert report["params"]["width"] == 64 and report["params"]["steps"] == 3

    overhead = report["sections"]["overhead"]
    for key in ("direct_s", "server_s", "ratio", "pair_ratio", "overhead_ms", "outside_pipeline_ms", "s_per_image",
                "it_per_s", "vae_upcast", "warmup_s"):
        assert key in overhead
    assert overhead["direct_s"]["n"] == overhead["server_s"]["n"] == 3
    assert 0 < overhead["direct_s"]["min"] <= overhead["direct_s"]["median"] <= overhead["direct_s"]["max"]
    assert overhead["server_s"]["median"] > 0 and overhead["it_per_s"] > 0
    assert math.isfinite(overhead["ratio"]) and overhead["ratio"] > 0
    assert overhead["outside_pipeline_ms"]["median"] > 0  # HTTP and the PNG are never free

    loop = report["sections"]["loop"]
    assert loop["idle_ms"]["n"] == 20 and loop["busy_ms"]["n"] > 0
    assert 0 < loop["idle_ms"]["median"] <= loop["idle_ms"]["p99"]
    assert 0 < loop["busy_ms"]["median"] <= loop["busy_ms"]["p99"]

    progress = report["sections"]["progress"]
    assert set(progress["by_clients"]) == {"1", "10"}
    for clients, result in progress["by_clients"].items():
        events = result["progress_events"]
        assert events["expected"] == int(clients) * 2 * 3  # clients x jobs x steps
        assert 0 < events["received"] <= events["expected"]
        assert result["latency_ms"]["median"] > 0 and result["latency_ms"]["p99"] >= result["latency_ms"]["median"]
    assert math.isfinite(progress["slowdown"]) and progress["slowdown"] > 0
    assert progress["by_clients"]["10"]["previews"] is True and progress["by_clients"]["10"]["health_calls"] > 0
    assert "with previews, and a /health flood" in table

    memory = report["sections"]["memory"]
    assert memory["jobs"] == 20 and len(memory["samples"]) >= 2
    assert memory["rss_mb"]["start"] > 0 and memory["rss_mb"]["max"] >= memory["rss_mb"]["end"] > 0
    assert math.isfinite(memory["growth_kb_per_job"])
    assert memory["peak_gpu_bytes"] is None and memory["it_per_s"] > 0
    fp8 = memory["fp8_tiny"]  # float8 weights change the tiny model's image, a little
    assert 0 < fp8["mean_abs_diff"] < 10 and fp8["max_abs_diff"] > 0 and fp8["psnr_db"] > 20
    assert "float8 weights, tiny model" in table and "fp8_fullsize" not in memory  # only with --memory-fullsize

    steps = report["sections"]["steps"]
    assert list(steps["by_steps"]) == ["1", "2", "4", "8", "25"]
    assert [r["unet_passes"] for r in steps["by_steps"].values()] == [1, 2, 4, 8, 50]
    assert all(r["images_per_s"] > 0 and r["served_s"]["n"] == 3 for r in steps["by_steps"].values())
    assert steps["speedup_4_vs_25"] > 1 and "4 steps against 25" in table

    batch = report["sections"]["batch"]
    assert set(batch["by_batch"]) == {"1", "4"} and batch["by_batch"]["4"]["s_per_call"]["n"] == 2
    assert batch["by_batch"]["1"]["images_per_s"] > 0 and math.isfinite(batch["speedup"])

    png = report["sections"]["png"]
    assert set(png["images"]) == {"generated", "smooth"} and png["levels"] == [0, 1, 3, 6, 9]
    smooth = png["images"]["smooth"]
    assert smooth["9"]["bytes"] < smooth["0"]["bytes"] and all(r["encode_ms"] > 0 for r in smooth.values())

    modes = report["sections"]["modes"]
    steps_run = {name: mode["steps_run"] for name, mode in modes["modes"].items()}
    assert steps_run == {  # 3 steps: image to image runs 3 x 0.75 -> 2; the image refiner adds 3 x 1/3 -> 1
        "txt2img": 3, "img2img": 2, "inpaint": 2, "inpaint (masked area)": 2,
        "refiner ensemble (0.8)": 3, "refiner image (0.3)": 4, "img2img + refiner ensemble": 2,
    }
    assert all(mode["s"]["median"] > 0 and mode["rss_max_mb"] > 0 for mode in modes["modes"].values())
    assert modes["refiner"]["id"] == "tiny" and modes["refiner"]["load_s"] > 0

    storage = report["sections"]["storage"]
    assert storage["png_bytes"] > 100_000 and storage["local"]["write_ms_median"] > 0
    s3 = storage["s3"]  # a SeaweedFS the section starts (the test extra installs it), or why not
    assert s3.get("skipped") or (s3["write_ms_median"] > 0 and s3["url_us"] > 0 and s3["import_boto3_s"] > 0), s3
    webhooks = report["sections"]["webhooks"]
    assert webhooks["latency_ms"]["n"] == 5 and webhooks["duplicates"] == 0
    assert 0 < webhooks["latency_ms"]["min"] <= webhooks["p95_ms"]
    hires = report["sections"]["hires"]
    assert list(hires["upscalers"]) == ["Latent", "Lanczos", "tiny-compact-2x"]  # the tiny model's upscaler model
    for case in hires["upscalers"].values():  # 64x64 x2; 3 steps, then 3 x 0.5 -> 1
        assert case["size"] == [128, 128] and case["steps_run"] == 4 and case["second_pass_steps"] == 1
        assert all(seconds >= 0 for seconds in case["phases_s"].values()) and case["phases_s"]["second_pass_s"] > 0
    assert "hires: 64x64 x2" in table

    preprocess = report["sections"]["controlnet"]["preprocess"]  # no annotator models here: the tiny ones
    assert preprocess["tiny_annotators"] and {"canny", "depth_midas", "openpose", "seg_ofade20k"} <= set(preprocess["modules"])
    assert all(times["first_s"] > 0 and times["s"]["n"] == 3 for times in preprocess["modules"].values())
    assert "preprocess at 64x64 (the tiny random-weights annotators, on cpu)" in table

    _check_switching(report["sections"]["switching"], table)

    cold = report["sections"]["coldstart"]
    for key in ("interpreter_s", "imports_s", "model_load_s", "first_generation_s", "ready_s", "first_image_s"):
        assert cold[key] > 0, key
    assert cold["ready_s"] < cold["first_image_s"] <= cold["process_s"]


def test_bench_refuses_bad_options(tiny_cache, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "sdxl_server.tools.bench", "--only", "overhead,nonsense"],
        cwd=tmp_path, env=_env(tiny_cache), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "choose from overhead,loop,progress,memory,batch,png,coldstart" in done.stderr


# --------------------------------------------------------------------------- the GPU check


@pytest.mark.slow(50)
def test_gpu_check_cpu_smoke(tiny_cache, tmp_path):
    report_path = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--cpu-smoke", "--json", str(report_path)],
        cwd=tmp_path, env=_env(tiny_cache), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["check"]["mode"] == "cpu-smoke"
    configs = report["configs"]
    assert set(configs) == {"fp32_sdpa", "fp32_xformers", "fp32_sdpa_channels_last_fused", "fp32_sdpa_compile",
                            "fp32_8gb", "fp32_6gb", "fp32_low"}
    for name in ("fp32_sdpa", "fp32_sdpa_channels_last_fused", "fp32_8gb", "fp32_6gb"):
        result = configs[name]
        assert "error" not in result, result
        assert result["s_per_image"] > 0 and result["it_per_s"] > 0 and math.isfinite(result["ratio"])
    assert configs["fp32_sdpa"]["options"]["memory_profile"]["profile"] == "high"
    fused = configs["fp32_sdpa_channels_last_fused"]["options"]
    assert fused["channels_last"] is True and fused["fuse_qkv"] is True
    eight = configs["fp32_8gb"]["options"]
    assert eight["vae_tiling"] is True and eight["text_encoder_offload"] is False and eight["fp8_weights"] == ["unet"]
    six = configs["fp32_6gb"]["options"]
    assert six["text_encoder_offload"] is True and six["fp8_weights"] == ["unet", "text_encoder", "text_encoder_2"]
    assert configs["fp32_sdpa"]["steps"]["by_steps"]["4"]["images_per_s"] > 0
    assert configs["fp32_sdpa"]["progress"]["by_clients"]["10"]["progress_events"]["received"] > 0
    assert configs["fp32_sdpa"]["batch"]["by_batch"]["4"]["images_per_s"] > 0
    assert 0 < report["8gb_profile"]["time_vs_high"]
    for name in ("fp32_xformers", "fp32_sdpa_compile", "fp32_low"):
        assert "skipped" in configs[name]
    refiner = report["refiner"]
    assert set(refiner) == {"high", "8gb"}, refiner
    for profile in ("high", "8gb"):
        modes = refiner[profile]["modes"]
        assert modes["refiner ensemble (0.8)"]["s"]["median"] > 0 and modes["txt2img"]["s"]["median"] > 0
        assert refiner[profile]["refiner"]["id"] == "tiny"
    hires = report["hires"]
    assert set(hires) == {"high", "8gb"}, hires
    for profile in ("high", "8gb"):  # 64x64 -> 128x128
        assert hires[profile]["Latent"]["size"] == [128, 128] and hires[profile]["Latent"]["s"]["median"] > 0
    cold = report["coldstart"]
    assert "error" not in cold, cold
    assert cold["model_load_s"] > 0 and cold["folder_bytes"] > 0
    assert "GPU check (cpu-smoke" in done.stdout


# --------------------------------------------------------------------------- admission


def test_the_admission_section_times_the_real_key_check(tmp_path):
    from sdxl_server.tools.bench.admission import admission_rows, section_admission
    from sdxl_server.tools.bench.options import BenchOptions

    opts = BenchOptions(width=64, height=64, steps=1, guidance_scale=1.0, admission_keys=20, admission_samples=50)
    result = section_admission(Settings(model_id="tiny", output_dir=tmp_path), opts)
    assert result["keys"] == 20
    for case in ("valid_key", "wrong_key", "api_key"):
        assert result[case]["n"] == result[case]["cpu_ms"]["n"] == 50
        assert 0 < result[case]["median"] <= result[case]["p99"] <= result[case]["max"]
    assert set(result["within_target"]) == {"wall", "cpu"}
    assert "a wrong key (401)" in "\n".join(label for label, _ in admission_rows(result))


@pytest.mark.slow(20)
def test_bench_upscale_section(tiny_cache, tmp_path):
    report_path = tmp_path / "upscale.json"
    done = subprocess.run(
        [sys.executable, "-m", "sdxl_server.tools.bench", "--only", "upscale", "--width", "96", "--height", "64",
         "--steps", "2", "--runs", "2", "--json", str(report_path)],
        cwd=tmp_path, env=_env(tiny_cache, UPSCALE_TILE="64"), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "upscale: POST /api/v1/upscale of 96x64 x4, 64 px tiles" in done.stdout, done.stdout
    result = json.loads(report_path.read_text())["sections"]["upscale"]
    assert list(result["upscalers"]) == ["Lanczos", "tiny-compact-2x"]
    model = result["upscalers"]["tiny-compact-2x"]
    assert model["output"] == "384x256" and model["tiles"] == 2 + 6  # 96x64, then 192x128, in 64 px tiles
    assert 0 < model["upscale_s"] <= model["s"]["median"] and result["upscalers"]["Lanczos"]["tiles"] == 1


def test_fp8_storage_halves_a_unets_weights_and_the_profiles_follow():
    """What the memory section measures on the full-size random UNet (--memory-fullsize), on a small one."""
    from diffusers import UNet2DConditionModel

    from sdxl_server.tools.bench.fewstep import _measure_fp8, profile_weights

    def unet():
        with torch.device("cpu"):
            return UNet2DConditionModel(block_out_channels=(32, 64), cross_attention_dim=32, layers_per_block=1,
                                        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).to(torch.float16)

    measured = _measure_fp8(unet, torch.float16)
    assert 0.45 < measured["ratio"] < 0.6 and measured["fp8_bytes"] < measured["bytes"]
    gib = 2**30
    profiles = profile_weights({"unet": {"bytes": 4.8 * gib, "fp8_bytes": 2.4 * gib},
                                "text_encoder_2": {"bytes": 1.3 * gib, "fp8_bytes": 0.7 * gib, "ratio": 0.54}})
    assert profiles["high"] > profiles["8gb"] > profiles["6gb"] > profiles["low"] == 0
    assert profiles["high"] - profiles["8gb"] == pytest.approx(2.4, abs=0.01)  # the UNet's half
