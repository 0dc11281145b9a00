#!/usr/bin/env python3
"""GPU check: SDXL's speed and memory through this server, on one CUDA GPU, in one short call.

It builds the full-size SDXL base 1.0 architecture with random weights straight on the GPU
(:mod:`sdxl_server.pipeline.fullsize`; no download, no network) and, for each configuration, serves it
with the real application on loopback (:mod:`sdxl_server.tools.bench`), then times 1024x1024, 25 steps,
batch 1, interleaving ``Engine.generate`` called directly and ``POST /api/v1/generate``:

==================================  ==========================================================
``fp16_sdpa``                       float16, PyTorch SDPA, ``MEMORY_PROFILE=high`` (all resident)
``fp16_xformers``                   float16, xFormers (only where ``xformers`` is importable)
``fp16_sdpa_channels_last_fused``   + ``CHANNELS_LAST`` and ``FUSE_QKV``
``fp16_sdpa_compile``               + ``COMPILE`` (``--compile``, on by default on CUDA): the
                                    server compiles and warms up at load, as it does in service
``fp16_8gb``                        ``MEMORY_PROFILE=8gb``: float8 UNet weights, VAE tiling
``fp16_6gb``                        ``MEMORY_PROFILE=6gb``: float8 UNet and text encoders, VAE
                                    tiling, text encoders on the CPU between prompts
``fp16_low``                        ``MEMORY_PROFILE=low``: group offload with CUDA streams
==================================  ==========================================================

Each reports s/image, it/s (steady denoising rate), peak GPU memory (``max_memory_allocated``,
and the peak with the CUDA context: what ``nvidia-smi`` would show) and the server overhead
ratio (the direct path saves a PNG as a plain script would). The first configuration also
measures the event loop, progress latency with 1 and 100 websocket clients, a batch of 4
against 1 (images/s) and images/s at 1, 2, 4, 8 and 25 steps (the bench's ``steps``); then, if time is left, the base with the full-size random SDXL refiner
(ensemble at 0.8, saved to a folder and loaded with ``REFINER_ID``) against the base alone, in the
default and 8 GB profiles (``--no-refiner`` to skip); then hires fix x2 (``Latent``, 1024² to
2048²) in the same two profiles: time, phases, peak memory (``--no-hires``); last, if time is left, a cold start from the
model saved as a diffusers folder (``MODEL_ID=/path``, the path a real model takes).

Every configuration runs in ``try``/``except`` (the error is recorded and the next runs), the
model is freed between them, nothing starts that would not finish within ``--budget-s`` (and
a watchdog ends the process at the budget), and the JSON report is rewritten after each step
(``$OUT/gpu_check.json`` when ``OUT`` is set). ``--cpu-smoke`` runs the same plumbing on a CPU
with the tiny model at 64x64 (what the test suite runs).

Run it through ``scripts/gpu_check.sh``, which installs the wheels carried with the working tree
first (see ``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub, even by accident

import torch  # noqa: E402

from sdxl_server.config import Settings  # noqa: E402
from sdxl_server.tools.bench.client import Client  # noqa: E402
from sdxl_server.tools.bench.coldstart import coldstart_once  # noqa: E402
from sdxl_server.tools.bench.hires import hires_profile_lines, hires_profiles  # noqa: E402
from sdxl_server.tools.bench.fewstep import section_steps  # noqa: E402
from sdxl_server.tools.bench.modes import refiner_lines, refiner_section  # noqa: E402
from sdxl_server.tools.bench.options import BenchOptions  # noqa: E402
from sdxl_server.tools.bench.sections import section_loop, section_overhead, section_progress  # noqa: E402
from sdxl_server.tools.bench.speed import section_batch  # noqa: E402
from sdxl_server.tools.bench.server import InProcessServer  # noqa: E402
from sdxl_server.tools.bench.timed import TimedEngine  # noqa: E402

GIB = 2**30


class Budget:
    """A global deadline: ``left()`` seconds remain; ``allows(s)`` if a step of ``s`` fits."""

    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Report:
    """The JSON report, rewritten after every step so a killed run still leaves its results."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"check": {}, "environment": {}, "configs": {}, "coldstart": None}
        self.lock = threading.Lock()

    def write(self) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")
            tmp.replace(self.path)


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_memory(cuda: bool) -> dict[str, Any]:
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return {"allocated_bytes": torch.cuda.memory_allocated(), "reserved_bytes": torch.cuda.memory_reserved()}
    return {}


def environment(cuda: bool) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": v("diffusers"),
        "transformers": v("transformers"),
        "accelerate": v("accelerate"),
        "aiohttp": v("aiohttp"),
        "xformers": v("xformers") if importlib.util.find_spec("xformers") else None,
        "triton": v("triton"),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": props.name, "memory_total_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
        }
    return env


def configurations(args: argparse.Namespace, cuda: bool) -> list[dict[str, Any]]:
    """Name, settings, compile mode and, where it cannot run here, why not."""
    xformers = importlib.util.find_spec("xformers") is not None
    high = {"attention": "sdpa", "memory_profile": "high"}
    configs = [
        {"name": "fp16_sdpa", "settings": high},
        {"name": "fp16_xformers", "settings": {**high, "attention": "xformers"},
         "skip": None if (cuda and xformers) else ("xformers is not importable" if cuda else "xFormers needs CUDA")},
        {"name": "fp16_sdpa_channels_last_fused", "settings": {**high, "channels_last": True, "fuse_qkv": True}},
        {"name": "fp16_sdpa_compile", "settings": {**high, "compile": args.compile_mode},
         "skip": None if args.compile else "torch.compile not asked for (--compile)", "needs_s": args.compile_budget_s},
        {"name": "fp16_8gb", "settings": {"attention": "sdpa", "memory_profile": "8gb"}},
        {"name": "fp16_6gb", "settings": {"attention": "sdpa", "memory_profile": "6gb"}},
        {"name": "fp16_low", "settings": {"attention": "sdpa", "memory_profile": "low"},
         "skip": None if cuda else "group offload needs CUDA"},
    ]
    if not cuda:  # the CPU smoke run keeps float32 (half precision on a CPU is slow and unusual)
        for config in configs:
            config["name"] = config["name"].replace("fp16", "fp32")
    if args.configs:
        wanted = set(args.configs.split(","))
        configs = [c for c in configs if c["name"] in wanted or c["name"].split("_", 1)[1] in wanted]
    return configs


async def measure(server: InProcessServer, opts: BenchOptions, extras: bool, budget: Budget) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=opts.timeout_s)) as session:
        client = Client(server, session, opts)
        result = await section_overhead(client)
        if extras:
            per_image = result["server_s"]["median"] or 1.0
            # the loop section: 1 job; progress: 2 runs with 1 client and 2 with 100
            if budget.allows(per_image * (1 + 4) + 60):
                try:
                    result["loop"] = await section_loop(client)
                    result["progress"] = await section_progress(client)
                    if budget.allows(per_image * (2 + 2 * opts.batch_size) + 60):
                        result["batch"] = await section_batch(client)
                    if budget.allows(per_image * 2 * (1 + opts.runs) + 60):  # 25 steps dominate the steps section
                        result["steps"] = await section_steps(client)
                except Exception as exc:  # noqa: BLE001
                    result["extras_error"] = f"{type(exc).__name__}: {exc}"
            else:
                result["extras_error"] = "skipped: not enough time left"
        return result


def run_config(
    config: dict[str, Any], base: Settings, factory: Callable[[], Any], opts: BenchOptions, cuda: bool,
    extras: bool, budget: Budget, sync_steps: bool = False,
) -> dict[str, Any]:
    settings = base.replace(**config["settings"])
    started = time.perf_counter()
    engine = TimedEngine(settings, pipeline_factory=factory, sync_steps=sync_steps)
    # Builds the model on the GPU and applies the options; with COMPILE, compiles and warms up
    # at the default size before it is ready, as the server does in service.
    server = InProcessServer(settings, engine).start()
    load_s = time.perf_counter() - started
    try:
        if engine.compilation.wanted:
            log(f"{config['name']}: compile {json.dumps(engine.compilation.describe())}")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        result = asyncio.run(measure(server, opts, extras, budget))
        result["compile"] = engine.compilation.describe()
        if cuda:
            result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
            result["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
            result["weights_on_gpu_bytes"] = resident
            free, total = torch.cuda.mem_get_info()
            context = (total - free) - torch.cuda.memory_reserved()  # the CUDA context and libraries
            result["cuda_context_bytes"] = context
            result["peak_with_context_bytes"] = context + result["peak_gpu_reserved_bytes"]
        result["options"] = dict(engine.options)
        result["build_and_load_s"] = round(load_s, 2)
        return result
    finally:
        server.stop()  # closes the engine: the pipeline is dropped
        del engine, server
        if config["settings"].get("compile"):
            torch._dynamo.reset()


def optional_step(report: Report, name: str, wanted: bool, flag: str, budget: Budget, needs_s: float,
                  run: Callable[[], dict[str, Any]]) -> None:
    """``run()``'s result as the report's ``name``, unless ``flag`` turned it off or it would not
    finish in the time left; an error is recorded, and the check goes on."""
    if not wanted:
        report.data[name] = {"skipped": flag}
    elif not budget.allows(needs_s):
        report.data[name] = {"skipped": f"not enough time left ({budget.left():.0f}s)"}
    else:
        try:
            report.data[name] = run()
        except Exception as exc:  # noqa: BLE001 - recorded; the next step still runs
            report.data[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            log(f"{name}: FAILED {exc}")
    report.write()


def summary_line(name: str, r: dict[str, Any]) -> str:
    if "error" in r or "skipped" in r:
        return f"{name:<32} {'SKIPPED: ' + r['skipped'] if 'skipped' in r else 'FAILED: ' + r['error']}"
    peak, with_context = r.get("peak_gpu_bytes"), r.get("peak_with_context_bytes")
    its = r.get("it_per_s")
    return (f"{name:<32} {r['s_per_image']:7.3f} s/image  {'-' if its is None else f'{its:6.2f}'} it/s  "
            f"peak {'-' if peak is None else f'{peak / GIB:6.2f} GiB'}"
            f" ({'-' if with_context is None else f'{with_context / GIB:.2f} GiB'} with context)"
            f"  server/direct {r['ratio']:.3f}"
            + (f"  batch x{r['batch']['speedup']:.2f} images/s" if "batch" in r else "")
            + ("  (VAE redone in fp32)" if r.get("vae_upcast") else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="prove the plumbing on a CPU: tiny model, 64x64, 2 steps")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting work after this (default 420; smoke 240)")
    parser.add_argument("--runs", type=int, default=None, help="interleaved runs per path and configuration (default 3; smoke 2)")
    parser.add_argument("--size", type=int, default=None, help="width and height (default 1024; smoke 64)")
    parser.add_argument("--steps", type=int, default=None, help="steps (default 25; smoke 2)")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None,
                        help="also the COMPILE configuration (UNet and VAE decoder)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-mode", default="default", choices=("default", "max-autotune"), help="COMPILE's mode")
    parser.add_argument("--compile-budget-s", type=float, default=240.0, help="time the compile configuration needs")
    parser.add_argument("--no-extras", dest="extras", action="store_false", help="skip loop/progress on the first config")
    parser.add_argument("--no-coldstart", dest="coldstart", action="store_false", help="skip the cold start from a folder")
    parser.add_argument("--no-hires", dest="hires", action="store_false",
                        help="skip hires fix x2 in the high and 8gb profiles (1024² -> 2048² on a GPU)")
    parser.add_argument("--no-refiner", dest="refiner", action="store_false",
                        help="skip base + refiner (ensemble at 0.8) in the high and 8gb profiles")
    parser.add_argument("--sync-steps", action="store_true",
                        help="synchronise CUDA at each step's timestamp (exact it/s, but one sync per step)")
    parser.add_argument("--configs", default=None, help="only these configurations (comma-separated names)")
    parser.add_argument("--json", type=Path, default=None, help="report path (default $OUT/gpu_check.json or ./gpu_check.json)")
    args = parser.parse_args(argv)

    smoke = args.cpu_smoke
    cuda = torch.cuda.is_available() and not smoke
    if not cuda and not smoke:
        print("gpu_check: no CUDA device here; use --cpu-smoke to check the plumbing on a CPU", file=sys.stderr)
        return 2
    if args.compile is None:
        args.compile = cuda
    budget = Budget(args.budget_s or (420.0 if cuda else 240.0))
    size = args.size or (1024 if cuda else 64)
    steps = args.steps or (25 if cuda else 2)
    runs = args.runs or (3 if cuda else 2)
    out = os.environ.get("OUT")
    report = Report(args.json or (Path(out) / "gpu_check.json" if out else Path("gpu_check.json")))
    report.data["check"] = {
        "mode": "cpu-smoke" if smoke else "gpu", "size": size, "steps": steps, "batch": 1, "runs": runs,
        "budget_s": budget.deadline - budget.started, "sync_steps": args.sync_steps, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": "tiny" if smoke else "fullsize-random (SDXL base 1.0 architecture, random weights)",
    }
    report.data["environment"] = environment(cuda)
    report.write()
    log(f"{report.data['check']['mode']}: {json.dumps(report.data['environment'])}")

    # The watchdog: whatever is running at the budget's end (plus a margin for the report), the
    # process ends with what it has; the report on disk is complete up to the last step.
    hard_stop = budget.left() + 45

    def watchdog() -> None:
        time.sleep(hard_stop)
        report.data["check"]["stopped_by_watchdog"] = True
        report.write()
        log(f"budget exhausted after {budget.elapsed():.0f}s: stopping (report in {report.path})")
        os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()

    scratch = tempfile.TemporaryDirectory(prefix="gpu-check-")
    tiny_cache = Path(scratch.name) / "tiny"
    base = Settings(
        model_id="tiny" if smoke else "fullsize-random",
        tiny_cache=tiny_cache,
        model_dir=Path(scratch.name) / "no-model-dir",
        device="cuda" if cuda else "cpu",
        dtype="float16" if cuda else "float32",
        output_dir=Path(scratch.name) / "outputs",
        host="127.0.0.1",
        default_width=size, default_height=size, default_steps=steps,
        max_width=max(1280, size), max_height=max(1280, size), max_steps=max(50, steps),
        torch_threads=0 if cuda else 1,
        log_level="warning",
        compile_cache=Path(scratch.name) / "inductor",  # a cold compile: what a first start pays
    )
    opts = BenchOptions(
        width=size, height=size, steps=steps, guidance_scale=7.0, runs=runs, loop_jobs=1, idle_samples=50,
        clients=100 if cuda else 10, progress_runs=2, batch_runs=1, timeout_s=max(60.0, budget.left()),
        previews=True, health_flood=True,  # the target: 100 clients receiving previews and a /health flood
    )

    if smoke:
        from sdxl_server.pipeline.tiny import build_tiny_pipeline

        def factory() -> Any:
            return build_tiny_pipeline()
    else:
        from sdxl_server.pipeline.fullsize import build_fullsize_pipeline

        def factory() -> Any:
            started = time.perf_counter()
            pipe = build_fullsize_pipeline("cuda", torch.float16)
            torch.cuda.synchronize()
            log(f"built the full-size random model on the GPU in {time.perf_counter() - started:.1f}s")
            return pipe

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    first = True
    for config in configurations(args, cuda):
        name = config["name"]
        if config.get("skip"):
            report.data["configs"][name] = {"skipped": config["skip"]}
        elif not budget.allows(config.get("needs_s", 45.0 if cuda else 10.0)):
            report.data["configs"][name] = {"skipped": f"not enough time left ({budget.left():.0f}s)"}
        else:
            log(f"{name}: starting ({budget.left():.0f}s left)")
            started = time.perf_counter()
            try:
                result = run_config(config, base, factory, opts, cuda, args.extras and first, budget, args.sync_steps)
                first = False
            except Exception as exc:  # noqa: BLE001 - recorded; the next configuration still runs
                result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            result["config_s"] = round(time.perf_counter() - started, 1)
            result["memory_after_free"] = free_memory(cuda)
            report.data["configs"][name] = result
        log(summary_line(name, report.data["configs"][name]))
        report.write()

    configs = report.data["configs"]
    high, eight = (configs.get(f"{'fp16' if cuda else 'fp32'}_{name}", {}) for name in ("sdpa", "8gb"))
    if "s_per_image" in high and "s_per_image" in eight:
        report.data["8gb_profile"] = {
            "time_vs_high": round(eight["s_per_image"] / high["s_per_image"], 4),
            "peak_with_context_gib": None if eight.get("peak_with_context_bytes") is None
            else round(eight["peak_with_context_bytes"] / GIB, 3),
            "targets": "peak <= 7.5 GiB with context at <= 1.3x the time",
        }
        log(f"8gb profile: {json.dumps(report.data['8gb_profile'])}")
    def refiner_step() -> dict[str, Any]:
        log(f"refiner: base + refiner, ensemble at 0.8, high and 8gb profiles ({budget.left():.0f}s left)")
        section = refiner_section(base, factory, opts, cuda, Path(scratch.name))
        for line in refiner_lines(section):
            log("refiner: " + line)
        return section

    def hires_step() -> dict[str, Any]:
        log(f"hires: x2 (Latent) from {size}x{size}, high and 8gb profiles ({budget.left():.0f}s left)")
        section = hires_profiles(base, factory, opts, cuda)
        for line in hires_profile_lines(section):
            log("hires: " + line)
        return section

    def coldstart_step() -> dict[str, Any]:
        from sdxl_server.pipeline.fullsize import save_fullsize_model

        log(f"cold start: saving the model as a diffusers folder ({budget.left():.0f}s left)")
        started = time.perf_counter()
        folder = Path(scratch.name) / "model"
        pipe = factory()
        save_fullsize_model(folder, pipe=pipe)
        del pipe
        saved_s = time.perf_counter() - started
        free_memory(cuda)
        settings = base.replace(model_id=str(folder), attention="sdpa")
        result = coldstart_once(settings, opts.body(), timeout=max(30.0, budget.left()))
        result["save_s"] = round(saved_s, 2)
        result["folder_bytes"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        result["section_s"] = round(time.perf_counter() - started, 1)
        log(f"cold start: {json.dumps(result)[:600]}")
        return result

    optional_step(report, "refiner", args.refiner, "--no-refiner", budget, 240.0 if cuda else 30.0, refiner_step)
    optional_step(report, "hires", args.hires, "--no-hires", budget, 240.0 if cuda else 30.0, hires_step)
    optional_step(report, "coldstart", args.coldstart, "--no-coldstart", budget, 150.0 if cuda else 30.0, coldstart_step)
    report.data["check"]["elapsed_s"] = round(budget.elapsed(), 1)
    report.write()
    scratch.cleanup()

    print()
    print(f"GPU check ({report.data['check']['mode']}, {size}x{size}, {steps} steps, batch 1) on "
          f"{report.data['environment'].get('gpu', {}).get('name', 'CPU')}:")
    for name, result in report.data["configs"].items():
        print("  " + summary_line(name, result))
    print(f"report: {report.path}")
    failed = [n for n, r in report.data["configs"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
