"""The report's rows for the ``steps`` section and the ``memory`` section's float8 figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def steps_rows(result: dict[str, Any], seconds: Callable[[float | None], str]) -> list[tuple[str, str]]:
    size = result["size"]
    rows: list[tuple[str, str]] = [("", ""), (f"steps: served at {size['width']}x{size['height']}, "
                                              f"{result['runs']} runs each", "")]
    for steps, r in result["by_steps"].items():
        rows.append((f"  {steps} step(s), guidance {r['guidance_scale']:g}, {r['schedule']}",
                     f"{r['images_per_s']:.2f} images/s (median {seconds(r['served_s']['median'])}; "
                     f"{r['unet_passes']} UNet passes)"))
    rows.append(("  4 steps against 25", f"{result['speedup_4_vs_25']:.2f}x the images per second"))
    return rows


def fp8_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    tiny = result.get("fp8_tiny")
    if tiny:
        rows.append(("  float8 weights, tiny model", f"mean |difference| {tiny['mean_abs_diff']:.2f}/255, "
                                                     f"max {tiny['max_abs_diff']}, PSNR {tiny['psnr_db']} dB "
                                                     f"({tiny['steps']} steps, seed {tiny['seed']})"))
    full = result.get("fp8_fullsize")
    if full:
        for name in ("unet", "text_encoder_2"):
            r = full[name]
            rows.append((f"  full-size {name}, {full['dtype']} -> float8",
                         f"{r['bytes'] / 2**30:.2f} -> {r['fp8_bytes'] / 2**30:.2f} GiB ({r['ratio']:.3f}x); "
                         f"RSS {r['rss_mb']} -> {r['fp8_rss_mb']} MB; cast in {r['cast_s']:.1f} s"))
        rows.append(("  weights on the GPU by profile", ", ".join(f"{k} {v:.2f} GiB" for k, v in full["profiles"].items())))
    return rows
