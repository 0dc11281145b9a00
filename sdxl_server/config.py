"""Settings from environment variables and command-line flags.

Every setting has one environment variable and one flag (``MODEL_ID`` and ``--model-id``); a flag
wins over the environment. A bad value stops start-up with one line that names the variable and
what it accepts (:class:`ConfigError`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HUB_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


class ConfigError(ValueError):
    """A setting has a value the server cannot start with; the message is one line."""


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return value

    parse.accepts = f"one of {', '.join(choices)}"  # type: ignore[attr-defined]
    return parse


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    accepts = f"a whole number from {low}" + (f" to {high}" if high is not None else " up")

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(accepts) from None
        if value < low or (high is not None and value > high):
            raise ValueError(accepts)
        return value

    parse.accepts = accepts  # type: ignore[attr-defined]
    return parse


def _float_range(low: float, high: float) -> Callable[[str], float]:
    accepts = f"a number from {low:g} to {high:g}"

    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(accepts) from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(accepts)
        return value

    parse.accepts = accepts  # type: ignore[attr-defined]
    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("true or false (also 1/0, yes/no, on/off)")


_bool.accepts = "true or false (also 1/0, yes/no, on/off)"  # type: ignore[attr-defined]


def _optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("a path")
    return Path(raw.strip()).expanduser()


_ORIGIN_RE = re.compile(r"^https?://[^/\s]+$")


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN_RE.match(origin):
            raise ValueError(_origins.accepts)  # type: ignore[attr-defined]
    return origins


_origins.accepts = "a comma-separated list of origins like https://app.example.com or http://localhost:3000, or *"  # type: ignore[attr-defined]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def _device(raw: str) -> str:
    value = raw.strip().lower()
    if not _DEVICE_RE.match(value):
        raise ValueError(_device.accepts)  # type: ignore[attr-defined]
    return value


_device.accepts = "auto, cpu, cuda, cuda:N or mps"  # type: ignore[attr-defined]

_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def _dtype(raw: str) -> str:
    value = raw.strip().lower()
    value = _DTYPE_ALIASES.get(value, value)
    if value not in ("auto", "float16", "bfloat16", "float32"):
        raise ValueError(_dtype.accepts)  # type: ignore[attr-defined]
    return value


_dtype.accepts = "auto, float16, bfloat16 or float32"  # type: ignore[attr-defined]


def _concurrency(raw: str) -> int:
    if raw.strip() != "1":
        raise ValueError(_concurrency.accepts)  # type: ignore[attr-defined]
    return 1


_concurrency.accepts = (  # type: ignore[attr-defined]
    "1: one GPU runs one generation at a time, and a second in parallel only slows both and risks "
    "out-of-memory; let more requests wait with QUEUE_SIZE"
)


def _setting(env: str, default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "help": help})


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told. Defaults follow the seed README."""

    # Model
    model_id: str | None = _setting(
        "MODEL_ID", None, _optional_str,
        "Hub id, diffusers folder, single .safetensors file, or 'tiny' (offline random weights). "
        "Unset: MODEL_DIR if it holds a model, else " + DEFAULT_HUB_MODEL,
    )
    model_dir: Path = _setting("MODEL_DIR", Path("model"), _path, "local model folder tried when MODEL_ID is unset")
    model_config: str | None = _setting(
        "MODEL_CONFIG", None, _optional_str,
        "diffusers folder or Hub id whose configs a single-file checkpoint is loaded with (offline: a local folder)",
    )
    vae_id: str | None = _setting(
        "VAE_ID", None, _optional_str, "replacement VAE: Hub id, folder or .safetensors (e.g. an fp16-fix VAE)"
    )
    refiner_id: str | None = _setting(
        "REFINER_ID", None, _optional_str,
        "SDXL refiner: Hub id, diffusers folder, single .safetensors file, or 'tiny'. Unset: a *refiner* "
        "checkpoint or folder in MODEL_DIR, if any. Loads on the first request that asks (at start with PRELOAD)",
    )
    tiny_cache: Path | None = _setting(
        "TINY_CACHE", None, lambda raw: _path(raw) if raw.strip() else None,
        "where MODEL_ID=tiny is built (default ~/.cache/sdxl_server)",
    )
    device: str = _setting("DEVICE", "auto", _device, "auto, cpu, cuda, cuda:N or mps")
    dtype: str = _setting("DTYPE", "auto", _dtype, "auto, float16, bfloat16 or float32")
    preload: bool = _setting("PRELOAD", True, _bool, "load the model at start-up rather than on the first request")
    torch_threads: int = _setting("TORCH_THREADS", 0, _int_range(0, 1024), "CPU threads for torch (0: torch's default)")

    # Memory options
    attention: str = _setting(
        "ATTENTION", "auto", _choice("auto", "sdpa", "xformers", "slicing"),
        "auto: xFormers when importable on CUDA, else PyTorch SDPA",
    )
    vae_tiling: str = _setting("VAE_TILING", "auto", _choice("auto", "on", "off"), "decode in tiles (auto: on with CUDA)")
    vae_slicing: bool = _setting("VAE_SLICING", True, _bool, "decode a batch one image at a time")
    cpu_offload: str = _setting(
        "CPU_OFFLOAD", "none", _choice("none", "model", "sequential"), "move idle sub-models to CPU (CUDA only)"
    )

    # Request defaults and limits
    default_width: int = _setting("DEFAULT_WIDTH", 1024, _int_range(64, 8192), "default image width")
    default_height: int = _setting("DEFAULT_HEIGHT", 1024, _int_range(64, 8192), "default image height")
    default_steps: int = _setting("DEFAULT_STEPS", 25, _int_range(1, 1000), "default sampling steps")
    default_guidance: float = _setting("DEFAULT_GUIDANCE", 7.0, _float_range(0.0, 30.0), "default CFG scale")
    max_width: int = _setting("MAX_WIDTH", 1280, _int_range(64, 8192), "largest width a request may ask for")
    max_height: int = _setting("MAX_HEIGHT", 1280, _int_range(64, 8192), "largest height a request may ask for")
    max_steps: int = _setting("MAX_STEPS", 50, _int_range(1, 1000), "most steps a request may ask for")
    max_batch: int = _setting("MAX_BATCH", 4, _int_range(1, 64), "most images one request may ask for")
    max_concurrency: int = _setting(
        "MAX_CONCURRENCY", 1, _concurrency, "generations at once: 1 (one GPU runs one; queue more with QUEUE_SIZE)"
    )
    queue_size: int = _setting("QUEUE_SIZE", 8, _int_range(0, 10_000), "jobs that may wait behind the running one (0: none)")
    max_prompt_length: int = _setting("MAX_PROMPT_LENGTH", 2000, _int_range(1, 100_000), "characters per prompt")
    max_body_bytes: int = _setting("MAX_BODY_BYTES", 65536, _int_range(1024, 16 * 1024 * 1024), "request body size")
    max_image_body_bytes: int = _setting(
        "MAX_IMAGE_BODY_BYTES", 32 * 1024 * 1024, _int_range(1024, 1024 * 1024 * 1024),
        "request body size on the routes that carry images (a PNG at the largest size plus a mask, base64)",
    )
    max_input_pixels: int = _setting(
        "MAX_INPUT_PIXELS", 4096 * 4096, _int_range(64 * 64, 1 << 30),
        "most pixels an input image may have (larger ones are refused before decoding; smaller ones are fitted)",
    )

    # Progress
    preview_every: int = _setting(
        "PREVIEW_EVERY", 2, _int_range(1, 1000), "steps between live previews sent to websocket clients that ask"
    )
    ws_heartbeat: float = _setting(
        "WS_HEARTBEAT", 30.0, _float_range(1.0, 3600.0), "seconds between websocket pings (dead peers are closed)"
    )

    # Exposure
    api_key: str | None = _setting(
        "API_KEY", None, _optional_str,
        "when set, every API route and the websocket need it (Authorization: Bearer KEY; websocket: ?token=KEY)",
    )
    outputs_need_key: bool = _setting(
        "OUTPUTS_NEED_KEY", False, _bool, "with API_KEY: /outputs/ needs the key too (header or ?token=)"
    )
    cors_origins: tuple[str, ...] = _setting(
        "CORS_ORIGINS", (), _origins, "comma-separated origins allowed to call the API from a browser ('*': any)"
    )
    ws_max_messages: int = _setting(
        "WS_MAX_MESSAGES", 1000, _int_range(1, 10_000_000), "messages a websocket client may send per connection"
    )
    ws_max_message_bytes: int = _setting(
        "WS_MAX_MESSAGE_BYTES", 4096, _int_range(64, 1024 * 1024), "largest message a websocket client may send"
    )
    shutdown_grace: float = _setting(
        "SHUTDOWN_GRACE", 30.0, _float_range(0.0, 3600.0),
        "seconds a running job may take to finish on SIGTERM/SIGINT before it is cancelled",
    )

    # Durability
    jobs_db: Path | None = _setting(
        "JOBS_DB", None, lambda raw: _path(raw) if raw.strip() else None,
        "the SQLite job store (default OUTPUT_DIR/jobs.sqlite3)",
    )
    restart_running: str = _setting(
        "RESTART_RUNNING", "requeue", _choice("requeue", "fail"),
        "after a crash, the job that was running: requeue (run it again, first) or fail",
    )
    retention_days: float = _setting(
        "RETENTION_DAYS", 0.0, _float_range(0.0, 36500.0), "delete finished jobs and their files after this many days (0: keep)"
    )
    retention_count: int = _setting(
        "RETENTION_COUNT", 0, _int_range(0, 10_000_000), "keep at most this many finished jobs and their files (0: all)"
    )

    # Server
    host: str = _setting("HOST", "0.0.0.0", lambda raw: raw.strip() or "0.0.0.0", "address to listen on")
    port: int = _setting("PORT", 8001, _int_range(0, 65535), "port to listen on")
    output_dir: Path = _setting("OUTPUT_DIR", Path("outputs"), _path, "where images and metadata are written")
    save_inputs: bool = _setting(
        "SAVE_INPUTS", False, _bool, "keep input images and masks in OUTPUT_DIR/inputs after their job ends"
    )
    log_level: str = _setting(
        "LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"), "logging level"
    )

    def __post_init__(self) -> None:
        for name, limit in (("DEFAULT_WIDTH", "MAX_WIDTH"), ("DEFAULT_HEIGHT", "MAX_HEIGHT"), ("DEFAULT_STEPS", "MAX_STEPS")):
            value, maximum = getattr(self, name.lower()), getattr(self, limit.lower())
            if value > maximum:
                raise ConfigError(f"{name}={value} is above {limit}={maximum}: lower it or raise {limit}")
        for name in ("DEFAULT_WIDTH", "DEFAULT_HEIGHT", "MAX_WIDTH", "MAX_HEIGHT"):
            value = getattr(self, name.lower())
            if value % 8:
                raise ConfigError(f"{name}={value} is not a multiple of 8: SDXL sizes are multiples of 8")

    @property
    def jobs_db_path(self) -> Path:
        return self.jobs_db or self.output_dir / "jobs.sqlite3"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _flag(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def settings_fields() -> list[dataclasses.Field]:
    """The settings, in the order docs/configuration.md's table lists them."""
    return list(dataclasses.fields(Settings))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting; values are parsed later, with the environment's."""
    group = parser.add_argument_group("settings (each flag overrides its environment variable)")
    for f in settings_fields():
        group.add_argument(_flag(f), dest=f.name, metavar=f.metadata["env"], default=None, help=f.metadata["help"])


def load_settings(environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None) -> Settings:
    """Build :class:`Settings` from the environment, then flags; raise :class:`ConfigError` on a bad value."""
    flags = flags or {}
    values: dict[str, Any] = {}
    for f in settings_fields():
        env = f.metadata["env"]
        raw, source = flags.get(f.name), _flag(f)
        if raw is None:
            raw, source = environ.get(env), env
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            accepts = getattr(f.metadata["parse"], "accepts", None) or str(exc)
            raise ConfigError(f"{source}={raw!r} is not valid: expected {accepts}") from None
    return Settings(**values)


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
