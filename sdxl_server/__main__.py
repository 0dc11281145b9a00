"""``python -m sdxl_server`` / ``sdxl-server``: settings from the environment and flags, then serve;
``python -m sdxl_server keys ...`` manages ``KEYS_FILE`` (:mod:`.tools.keys_cli`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from .config import ConfigError, Settings, add_arguments, load_settings, settings_fields


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["keys"]:  # python -m sdxl_server keys add|list|revoke
        from .tools.keys_cli import main as keys_main

        return keys_main(arguments[1:], os.environ)
    args, settings = _settings_or_exit(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.check_model:
        from .tools.check_model import check_model

        return check_model(settings)

    from aiohttp import web

    from .api.app import create_app
    from .api.security import RedactingAccessLogger
    from .pipeline.runtime import resolve_runtime

    try:
        if settings.backend == "local":  # on Ray, each replica checks its own device
            resolve_runtime(settings)  # a bad DEVICE/DTYPE/option combination stops here, in one line
    except ConfigError as exc:
        print(f"sdxl-server: error: {exc}", file=sys.stderr)
        return 2
    try:
        web.run_app(
            create_app(settings), host=settings.host, port=settings.port,
            access_log_class=RedactingAccessLogger, print=logging.getLogger("sdxl_server").info,
        )
    except (ConfigError, OSError) as exc:  # the job store, OUTPUT_DIR or the port cannot be used
        print(f"sdxl-server: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _settings_or_exit(argv: Sequence[str] | None):
    try:
        return parse_args(argv, os.environ)
    except ConfigError as exc:
        print(f"sdxl-server: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> tuple[argparse.Namespace, Settings]:
    """Parse the command line; return the namespace (for non-setting flags) and the settings."""
    parser = argparse.ArgumentParser(
        prog="sdxl-server", description="Self-hosted Stable Diffusion XL text-to-image server."
    )
    parser.add_argument(
        "--check-model", action="store_true",
        help="say which model would be loaded and from where, load it once, report and exit",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    flags = {f.name: getattr(args, f.name) for f in settings_fields()}
    return args, load_settings(environ, flags)


if __name__ == "__main__":
    sys.exit(main())
