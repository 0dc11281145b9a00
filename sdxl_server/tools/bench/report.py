"""The report as a plain-text table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .admission import admission_rows
from .controlnet import controlnet_rows
from .hires import hires_rows
from .fewstep_report import fp8_rows, steps_rows
from .modes import modes_rows
from .storage import storage_rows
from .upscaling import upscale_rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _spread(summary: dict[str, Any], fmt: Callable[[float | None], str]) -> str:
    if not summary.get("n"):
        return "no samples"
    return (f"median {fmt(summary['median'])}  IQR {fmt(summary['q1'])}-{fmt(summary['q3'])}  "
            f"min {fmt(summary['min'])}  max {fmt(summary['max'])}  (n={summary['n']})")


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def _title(rows: list[tuple[str, str]], title: str) -> None:
    rows.append(("", ""))
    rows.append((title, ""))


def _overhead_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    _title(rows, f"server overhead ({result['runs']} interleaved runs each)")
    rows.append(("  Engine.generate (direct)", _spread(result["direct_s"], _s)))
    rows.append(("  POST /api/v1/generate", _spread(result["server_s"], _s)))
    pr = result["pair_ratio"]
    rows.append(("  ratio server/direct", f"{result['ratio']:.3f} (medians); per pair median {pr['median']:.3f}, "
                                         f"min {pr['min']:.3f}, max {pr['max']:.3f}"))
    rows.append(("  server minus direct", _spread(result["overhead_ms"], _ms)))
    rows.append(("  outside the pipeline", _spread(result["outside_pipeline_ms"], _ms)
                 + "  [HTTP, queue, events, PNG + metadata]"))
    its = "-" if result["it_per_s"] is None else f"{result['it_per_s']:.2f} it/s"
    rows.append(("  s/image, it/s", f"{_s(result['s_per_image'])}, {its}"
                 + ("  (VAE decode redone in float32)" if result["vae_upcast"] else "")))
    return rows


def _loop_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    _title(rows, f"event loop: GET /health every {result['interval_ms']:g} ms")
    idle, busy = result["idle_ms"], result["busy_ms"]
    rows.append(("  idle", f"median {_ms(idle['median'])}, p99 {_ms(idle['p99'])}, max {_ms(idle['max'])} (n={idle['n']})"))
    rows.append((f"  during {result['jobs']} generation(s)",
                 f"median {_ms(busy['median'])}, p99 {_ms(busy['p99'])}, max {_ms(busy['max'])} (n={busy['n']})"))
    return rows


def _first(by: dict[str, Any]) -> dict[str, Any]:
    return next(iter(by.values()), {})


def _last(by: dict[str, Any]) -> dict[str, Any]:
    return list(by.values())[-1] if by else {}


def _by_count(title: str, by: dict[str, Any], noun: str, describe: Callable[[dict[str, Any]], str],
              last: tuple[str, str]) -> list[tuple[str, str]]:
    """A titled row per count ("1 client", "100 clients"), then ``last``."""
    rows: list[tuple[str, str]] = []
    _title(rows, title)
    for n, r in by.items():
        rows.append((f"  {n} {noun.replace('*', 's' if n != '1' else '')}", describe(r)))
    rows.append(last)
    return rows


def _progress_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    def describe(r: dict[str, Any]) -> str:
        lat, ev = r["latency_ms"], r["progress_events"]
        return (f"median {_ms(lat['median'])}, p99 {_ms(lat['p99'])}, max {_ms(lat['max'])}; "
                f"{ev['received']}/{ev['expected']} events; generation {_s(r['generation_s']['median'])}")

    return _by_count(
        f"progress: step callback -> websocket client ({result['runs']} jobs each"
        + (", with previews" if _first(result["by_clients"]).get("previews") else "")
        + (", and a /health flood" if _last(result["by_clients"]).get("health_calls") else "") + ")",
        result["by_clients"], "client*",
        describe, ("  generation slowdown", f"{result['slowdown']:.3f}x with {list(result['by_clients'])[-1]} clients vs 1"),
    )


def _memory_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    jp = result["job_params"]
    _title(rows, f"memory: {result['jobs']} jobs at {jp['width']}x{jp['height']}, {jp['steps']} step(s)")
    rss = result["rss_mb"]
    rows.append(("  resident memory", f"start {rss['start']:.1f} MB, end {rss['end']:.1f} MB, max {rss['max']:.1f} MB"))
    rows.append(("  growth", f"{result['growth_kb_per_job']:.2f} KB/job (linear fit), "
                             f"{result['rss_growth_mb']:+.2f} MB over the run; {result['jobs_per_s']:.1f} jobs/s"))
    size = result["size"]
    rows.append((f"  at {size['width']}x{size['height']}, {size['steps']} steps",
                 f"peak GPU memory {_gib(result['peak_gpu_bytes'])}"
                 + (f" (reserved {_gib(result['peak_gpu_reserved_bytes'])})" if result["peak_gpu_bytes"] else
                    f" (no CUDA: {result['device']})")
                 + f"; {'-' if result['it_per_s'] is None else format(result['it_per_s'], '.2f')} it/s, "
                 f"{_s(result['s_per_image'])}/image"))
    return rows + fp8_rows(result)


def _coldstart_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    _title(rows, f"cold start: fresh process ({result['runs']} run(s), median)")
    rows.append(("  interpreter", _s(result["interpreter_s"])))
    rows.append(("  imports", _s(result["imports_s"]) + "  [torch, diffusers, the server's modules]"))
    rows.append(("  model load", _s(result["model_load_s"])))
    rows.append(("  first generation", _s(result["first_generation_s"])
                 + f"  (second: {_s(result['second_generation_s'])})"))
    rows.append(("  ready (start -> loaded)", _s(result["ready_s"])))
    rows.append(("  first image (start -> image)", _s(result["first_image_s"])))
    return rows


def _switching_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    lora, model, p = result["lora"], result["model"], result["params"]
    _title(rows, f"switching: LoRAs and models on the engine ({p['width']}x{p['height']}, {p['steps']} steps)")
    rows.append(("  LoRA load (first, second)", f"{_s(lora['load_s'])}, {_s(lora['second_load_s'])}"))
    rows.append(("  LoRA switch (loaded set)", f"{_ms(lora['switch_s'] * 1000)}; off {_ms(lora['off_s'] * 1000)}"))
    step, slow = lora["step_s"], lora["step_slowdown"]
    rows.append(("  per step, no LoRA", _ms(step["none"] * 1000)))
    for key, label in (("one_unfused", "one unfused"), ("two_unfused", "two unfused"),
                       ("one_fused", "one fused"), ("two_fused", "two fused")):
        rows.append((f"  per step, {label}", f"{_ms(step[key] * 1000)} ({slow[key]:.3f}x)"))
    rows.append(("  model load (default)", _s(model["model_load_s"])))
    if "skipped" in model:
        rows.append(("  model switch", f"not measured: {model['skipped']}"))
    else:
        rows.append((f"  switch to {model['other']} from disk", _s(model["switch_from_disk_s"])))
        rows.append(("  switch back / again from RAM", f"{_s(model['switch_back_from_ram_s'])}, {_s(model['switch_again_from_ram_s'])}"))
    return rows


def _batch_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    return _by_count(
        f"batch: images per pipeline call ({result['runs']} runs each, after a warm-up)", result["by_batch"],
        "image* per call", lambda r: f"{r['images_per_s']:.3f} images/s; {_spread(r['s_per_call'], _s)}",
        ("  speed-up", f"{result['speedup']:.3f}x images/s with {list(result['by_batch'])[-1]} per call vs 1"),
    )


def _png_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    size = result["size"]
    _title(rows, f"PNG encode at {size['width']}x{size['height']} by zlib level (PNG_COMPRESS_LEVEL)")
    for name, levels in result["images"].items():
        rows.append((f"  {name} image", "  ".join(
            f"{level}: {r['encode_ms']:.1f} ms {r['bytes'] / 1e6:.2f} MB" for level, r in levels.items()
        )))
    return rows


def _webhook_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    _title(rows, f"webhook delivery after a job ends, to a local receiver ({result['jobs']} jobs at {result['size']}px)")
    latency = result["latency_ms"]
    rows.append(("  latency", _spread(latency, _ms)))
    rows.append(("  p95", f"{_ms(result['p95_ms'])} (target < {result['target_p95_ms']} ms)"))
    rows.append(("  duplicates", str(result["duplicates"])))
    return rows


_SECTION_ROWS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str]]]] = {
    "overhead": _overhead_rows,
    "loop": _loop_rows,
    "progress": _progress_rows,
    "memory": _memory_rows,
    "steps": lambda result: steps_rows(result, _s),
    "batch": _batch_rows,
    "png": _png_rows,
    "coldstart": _coldstart_rows,
    "switching": _switching_rows,
    "modes": lambda result: modes_rows(result, _s, _gib),
    "storage": storage_rows,
    "webhooks": _webhook_rows,
    "admission": admission_rows,
    "controlnet": lambda result: controlnet_rows(result, _s, _gib),
    "upscale": lambda result: upscale_rows(result, _s, _gib),
    "hires": lambda result: hires_rows(result, _s, _gib),
}


def _options_line(env: dict[str, Any]) -> str:
    options, compiled = env.get("options") or {}, env.get("compile") or {}
    memory = options.get("memory_profile") or {}
    compile_text = compiled.get("mode", "none")
    if compiled.get("state") not in (None, "off"):
        compile_text += f" ({compiled['state']}, {_s(compiled.get('seconds'))})"
    return (f"compile {compile_text}; channels_last {options.get('channels_last')}; fused QKV {options.get('fuse_qkv')}; "
            f"memory profile {memory.get('profile')} (VAE tiling {options.get('vae_tiling')}, text encoders "
            f"{'on the CPU' if options.get('text_encoder_offload') else 'resident'}, offload {options.get('cpu_offload')})")


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    env = report.get("environment") or {}
    p = report["params"]
    lines = [
        f"sdxl_server bench: model {env.get('model_id')} ({env.get('model_source')}) on "
        f"{env.get('device')}/{env.get('dtype')}"
        + (f" [{env['gpu']['name']}]" if env.get("gpu") else f", {env.get('torch_threads')} torch threads")
        + f"; torch {env.get('torch')}, diffusers {env.get('diffusers')}",
        f"size {p['width']}x{p['height']}, {p['steps']} steps, guidance {p['guidance_scale']}, "
        f"scheduler {p['scheduler']}; attention {env.get('options', {}).get('attention')}",
        _options_line(env),
    ]
    rows: list[tuple[str, str]] = []
    for name, result in report["sections"].items():
        if "error" in result:
            _title(rows, name)
            rows.append(("  FAILED", result["error"]))
        else:
            rows.extend(_SECTION_ROWS[name](result))
    width = max((len(label) for label, value in rows if value), default=0) + 2
    for label, value in rows:
        lines.append(f"{label:<{width}}{value}".rstrip() if value else label)
    return "\n".join(lines)
