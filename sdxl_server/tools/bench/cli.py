"""The command line: python -m sdxl_server.tools.bench."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ...config import ConfigError, Settings, add_arguments, load_settings, settings_fields
from .options import PROMPT, SECTIONS, BenchError, BenchOptions
from .report import format_report
from .run import run_bench


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _levels(raw: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(level) for level in raw.split(",") if level.strip())
    except ValueError:
        levels = ()
    if not levels or any(not 0 <= level <= 9 for level in levels):
        raise argparse.ArgumentTypeError(f"zlib levels 0-9, comma-separated (got {raw!r})")
    return levels


def _sections(raw: str) -> list[str]:
    chosen = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SECTIONS)} (got {raw!r})")
    return [s for s in SECTIONS if s in chosen]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sdxl_server.tools.bench", description=__doc__.splitlines()[0],
        epilog="The model and every server setting come from the environment (MODEL_ID=tiny, DEVICE, DTYPE, ...) "
               "or the server's own flags, as for `python -m sdxl_server`.",
    )
    b = parser.add_argument_group("benchmark")
    b.add_argument("--only", type=_sections, default=list(SECTIONS), help=f"sections, comma-separated: {','.join(SECTIONS)}")
    b.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every figure as JSON")
    b.add_argument("--width", type=int, default=None, help="benchmark size (default: 512 for MODEL_ID=tiny, else DEFAULT_WIDTH)")
    b.add_argument("--height", type=int, default=None, help="(default: as --width's)")
    b.add_argument("--steps", type=_positive, default=None, help="steps (default: 10 for MODEL_ID=tiny, else DEFAULT_STEPS)")
    b.add_argument("--guidance", type=float, default=None, help="guidance scale (default: DEFAULT_GUIDANCE)")
    b.add_argument("--scheduler", default="default")
    b.add_argument("--prompt", default=PROMPT)
    b.add_argument("--runs", type=_positive, default=5, help="overhead: interleaved runs of each path (default 5)")
    b.add_argument("--loop-jobs", type=_positive, default=2, help="loop: generations to poll /health during (default 2)")
    b.add_argument("--health-interval-ms", type=float, default=10.0, help="loop: pause between /health calls")
    b.add_argument("--idle-samples", type=_positive, default=100, help="loop: /health calls while idle (default 100)")
    b.add_argument("--clients", type=_positive, default=100, help="progress: websocket subscribers besides 1 (default 100)")
    b.add_argument("--previews", action="store_true", help="progress: the clients ask for previews (?preview=1)")
    b.add_argument("--health-flood", action="store_true", help="progress: GET /health back to back while the many clients run")
    b.add_argument("--progress-runs", type=_positive, default=3, help="progress: jobs per client count (default 3)")
    b.add_argument("--memory-jobs", type=_positive, default=300, help="memory: small generations (default 300)")
    b.add_argument("--memory-size", type=int, default=64, help="memory: their width and height (default 64)")
    b.add_argument("--memory-steps", type=_positive, default=1, help="memory: their steps (default 1)")
    b.add_argument("--memory-fullsize", action="store_true",
                   help="memory: also the full-size random UNet and text encoder 2 with and without float8 (about 5 GB of RAM)")
    b.add_argument("--batch-size", type=_positive, default=4, help="batch: images per request against 1 (default 4)")
    b.add_argument("--batch-runs", type=_positive, default=2, help="batch: runs of each (default 2)")
    b.add_argument("--png-levels", type=_levels, default=(0, 1, 3, 6, 9), help="png: zlib levels to time (default 0,1,3,6,9)")
    b.add_argument("--webhook-jobs", type=_positive, default=20, help="webhooks: jobs whose webhook is timed (default 20)")
    b.add_argument("--coldstart-runs", type=_positive, default=1, help="coldstart: fresh processes (default 1)")
    b.add_argument("--admission-keys", type=_positive, default=100, help="admission: keys in the KEYS_FILE (default 100)")
    b.add_argument("--admission-samples", type=_positive, default=2000, help="admission: requests timed per case (default 2000)")
    b.add_argument("--timeout", type=float, default=1800.0, help="seconds any one request or process may take")
    b.add_argument("--verbose", action="store_true", help="log at LOG_LEVEL (default: warnings only)")
    add_arguments(parser)
    return parser


def options_from_args(args: argparse.Namespace, settings: Settings) -> BenchOptions:
    tiny = (settings.model_id or "").lower() == "tiny"
    width = args.width or (512 if tiny else settings.default_width)
    derived = {"width", "height", "steps", "guidance_scale"}  # defaults that depend on the model
    copied = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(BenchOptions)
        if f.name not in derived and hasattr(args, f.name)
    }
    return BenchOptions(
        **copied,
        timeout_s=args.timeout,
        width=width,
        height=args.height or (512 if tiny and not args.width else (args.width or settings.default_height)),
        steps=args.steps or (10 if tiny else settings.default_steps),
        guidance_scale=settings.default_guidance if args.guidance is None else args.guidance,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = {f.name: getattr(args, f.name) for f in settings_fields()}
    try:
        settings = load_settings(os.environ, flags)
        opts = options_from_args(args, settings)
        for name in ("width", "height", "memory_size"):
            if getattr(opts, name) % 8 or getattr(opts, name) < 64:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(opts, name)}: sizes are multiples of 8 from 64")
    except ConfigError as exc:
        print(f"sdxl_server.tools.bench: error: {exc}", file=sys.stderr)
        return 2
    level = settings.log_level.upper() if args.verbose else "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # loading bars would interleave with the table
        transformers_logging.disable_progress_bar()
    try:
        report = run_bench(settings, opts, args.only)
    except (ConfigError, BenchError) as exc:
        print(f"sdxl_server.tools.bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nJSON written to {args.json}")
    failed = [name for name, result in report["sections"].items() if "error" in result]
    return 1 if failed else 0

