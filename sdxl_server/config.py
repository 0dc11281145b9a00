"""Settings from environment variables and command-line flags.

Every setting has one environment variable and one flag (``MODEL_ID`` and ``--model-id``); a flag
wins over the environment. A bad value stops start-up with one line that names the variable and
what it accepts (:class:`ConfigError`).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .params import MAX_CONTROL_UNITS
from .setting_values import (
    _choice,
    _int_range,
    _float_range,
    _bool,
    _optional_str,
    _path,
    _origins,
    Networks,
    _networks,
    _public_url,
    _output_store,
    _device,
    _dtype,
    _concurrency,
    WebhookAllow,
    _webhook_allow,
    _webhook_secret,
    _webhook_url,
)

DEFAULT_HUB_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_HUB_REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"


class ConfigError(ValueError):
    """A setting has a value the server cannot start with; the message is one line."""


def cache_home() -> Path:
    """Where the server keeps its caches (the tiny model, the compile cache) by default:
    ``$XDG_CACHE_HOME/sdxl_server``, else ``~/.cache/sdxl_server``, as torch, pip and the Hub do."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sdxl_server"


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
    refiner_config: str | None = _setting(
        "REFINER_CONFIG", None, _optional_str,
        "diffusers folder or Hub id whose configs a single-file refiner is loaded with (offline: a local "
        "folder). Unset: " + DEFAULT_HUB_REFINER,
    )
    tiny_cache: Path | None = _setting(
        "TINY_CACHE", None, lambda raw: _path(raw) if raw.strip() else None,
        "where MODEL_ID=tiny is built (default $XDG_CACHE_HOME/sdxl_server, else ~/.cache/sdxl_server)",
    )
    device: str = _setting("DEVICE", "auto", _device, "auto, cpu, cuda, cuda:N or mps")
    dtype: str = _setting("DTYPE", "auto", _dtype, "auto, float16, bfloat16 or float32")
    preload: bool = _setting("PRELOAD", True, _bool, "load the model at start-up rather than on the first request")
    torch_threads: int = _setting("TORCH_THREADS", 0, _int_range(0, 1024), "CPU threads for torch (0: torch's default)")
    models_dir: Path = _setting(
        "MODELS_DIR", Path("models"), _path,
        "folder of more checkpoints (diffusers folders, single .safetensors) a request may pick by name",
    )
    model_cache: int = _setting("MODEL_CACHE", 1, _int_range(1, 16), "models kept loaded on the device (the running one included)")
    model_ram_cache: int = _setting("MODEL_RAM_CACHE", 0, _int_range(0, 64), "more models kept in CPU RAM for a quick switch back")

    # Memory options
    attention: str = _setting(
        "ATTENTION", "auto", _choice("auto", "sdpa", "xformers", "slicing"),
        "auto: xFormers when importable on CUDA, else PyTorch SDPA",
    )
    vae_tiling: str = _setting(
        "VAE_TILING", "auto", _choice("auto", "on", "off"), "decode in tiles (auto: as MEMORY_PROFILE says)"
    )
    vae_slicing: bool = _setting("VAE_SLICING", True, _bool, "decode a batch one image at a time")
    cpu_offload: str = _setting(
        "CPU_OFFLOAD", "auto", _choice("auto", "none", "model", "group", "sequential"),
        "move idle weights to CPU (CUDA only; group: by blocks, with CUDA streams; auto: as MEMORY_PROFILE says)",
    )
    memory_profile: str = _setting(
        "MEMORY_PROFILE", "auto", _choice("auto", "high", "8gb", "6gb", "low"),
        "memory settings for the GPU's size (auto: read it); VAE_TILING, CPU_OFFLOAD, TEXT_ENCODER_OFFLOAD, FP8_WEIGHTS override",
    )
    fp8_weights: str = _setting(
        "FP8_WEIGHTS", "auto", _choice("auto", "off", "unet", "all"),
        "store the UNet's (all: and the text encoders') weights in float8, computed in DTYPE (auto: as MEMORY_PROFILE says)",
    )
    text_encoder_offload: str = _setting(
        "TEXT_ENCODER_OFFLOAD", "auto", _choice("auto", "on", "off"),
        "keep the text encoders on the CPU, on the GPU only to encode a prompt (auto: as MEMORY_PROFILE says)",
    )

    # Speed
    compile: str = _setting(
        "COMPILE", "none", _choice("none", "default", "max-autotune"),
        "torch.compile the UNet and VAE decoder at load (warmed up before /health says ok)",
    )
    compile_cache: Path | None = _setting(
        "COMPILE_CACHE", None, lambda raw: _path(raw) if raw.strip() else None,
        "persistent compile cache (default TORCHINDUCTOR_CACHE_DIR if set, else inductor/ in the cache home: $XDG_CACHE_HOME/sdxl_server or ~/.cache/sdxl_server)",
    )
    channels_last: bool = _setting("CHANNELS_LAST", False, _bool, "UNet and VAE in channels-last memory format")
    fuse_qkv: bool = _setting("FUSE_QKV", False, _bool, "fuse attention's query, key and value projections (SDPA)")
    png_compress_level: int = _setting(
        "PNG_COMPRESS_LEVEL", 1, _int_range(0, 9), "zlib level of the PNG files (0: none, 9: smallest, slowest)"
    )

    # Request defaults and limits
    default_width: int = _setting("DEFAULT_WIDTH", 1024, _int_range(64, 8192), "default image width")
    default_height: int = _setting("DEFAULT_HEIGHT", 1024, _int_range(64, 8192), "default image height")
    default_steps: int = _setting("DEFAULT_STEPS", 25, _int_range(1, 1000), "default sampling steps")
    default_guidance: float = _setting("DEFAULT_GUIDANCE", 7.0, _float_range(0.0, 30.0), "default CFG scale")
    max_width: int = _setting("MAX_WIDTH", 1280, _int_range(64, 8192), "largest width a request may ask for")
    max_height: int = _setting("MAX_HEIGHT", 1280, _int_range(64, 8192), "largest height a request may ask for")
    max_output_pixels: int = _setting(
        "MAX_OUTPUT_PIXELS", 2048 * 2048, _int_range(64 * 64, 1 << 28),
        "most pixels of one image after hires fix (its first pass keeps MAX_WIDTH x MAX_HEIGHT)",
    )
    max_steps: int = _setting("MAX_STEPS", 50, _int_range(1, 1000), "most steps a request may ask for")
    max_batch: int = _setting("MAX_BATCH", 4, _int_range(1, 64), "most images one job (one pipeline call) makes")
    max_request_images: int = _setting(
        "MAX_REQUEST_IMAGES", 16, _int_range(1, 1000),
        "most images one compatible request makes (A1111's batch_size x n_iter, OpenAI's n), in jobs of at most MAX_BATCH",
    )
    max_concurrency: int = _setting(
        "MAX_CONCURRENCY", 0, _concurrency,
        "generations at once (0: auto): 1 with BACKEND=local; with BACKEND=ray up to the replicas' total (the default)",
    )
    queue_size: int = _setting("QUEUE_SIZE", 8, _int_range(0, 10_000), "jobs that may wait behind the running one (0: none)")
    max_prompt_length: int = _setting("MAX_PROMPT_LENGTH", 2000, _int_range(1, 100_000), "characters per prompt")
    max_body_bytes: int = _setting("MAX_BODY_BYTES", 65536, _int_range(1024, 16 * 1024 * 1024), "request body size")
    max_image_body_bytes: int = _setting(
        "MAX_IMAGE_BODY_BYTES", 32 * 1024 * 1024, _int_range(1024, 1024 * 1024 * 1024),
        "request body size on the routes that carry images (a PNG at the largest size plus a mask, base64)",
    )
    body_min_rate: int = _setting(
        "BODY_MIN_RATE", 8192, _int_range(1, 1 << 30),
        "bytes per second a request body must keep arriving at (checked every 10 s); slower: 408",
    )
    max_receiving_bodies: int = _setting(
        "MAX_RECEIVING_BODIES", 32, _int_range(1, 100_000),
        "requests whose bodies may be arriving at once; more: 503 until some have arrived",
    )
    max_input_pixels: int = _setting(
        "MAX_INPUT_PIXELS", 4096 * 4096, _int_range(64 * 64, 1 << 30),
        "most pixels an input image may have (larger ones are refused before decoding; smaller ones are fitted)",
    )

    # Prompts and LoRAs
    prompt_syntax: str = _setting(
        "PROMPT_SYNTAX", "a1111", _choice("a1111", "plain"),
        "a1111: (word:1.3) weights, BREAK and <lora:name:weight>; plain: the prompt is literal text. "
        "Both encode past 77 tokens in 75-token chunks",
    )
    lora_dir: Path = _setting("LORA_DIR", Path("loras"), _path, "folder of LoRA .safetensors files (kohya/A1111 or diffusers layout)")
    embeddings_dir: Path = _setting(
        "EMBEDDINGS_DIR", Path("embeddings"), _path,
        "folder of SDXL textual-inversion .safetensors files (clip_l and clip_g), used by name in prompts; absent: none",
    )
    styles_file: Path = _setting(
        "STYLES_FILE", Path("styles.csv"), _path,
        "A1111 styles.csv (name,prompt,negative_prompt) a request's styles come from; absent: no styles",
    )
    upscalers_dir: Path = _setting(
        "UPSCALERS_DIR", Path("models/upscalers"), _path,
        "folder of upscaler models (.pth, .safetensors: ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, ... read with spandrel)",
    )
    upscale_tile: int = _setting("UPSCALE_TILE", 512, _int_range(32, 4096), "tile size (pixels) upscaler models run in; halves on out of memory")
    upscale_tile_overlap: int = _setting(
        "UPSCALE_TILE_OVERLAP", 32, _int_range(0, 512), "pixels of context each upscaler tile reads beyond its edges"
    )
    lora_cache: int = _setting("LORA_CACHE", 4, _int_range(1, 256), "LoRAs kept loaded (least recently used unloaded first)")
    max_loras: int = _setting("MAX_LORAS", 5, _int_range(1, 64), "most LoRAs one request may use")
    controlnet_dir: Path = _setting(
        "CONTROLNET_DIR", Path("models/controlnet"), _path,
        "folder of SDXL ControlNets (diffusers folders or .safetensors files, ControlNet-Union too); absent: none",
    )
    max_controlnets: int = _setting("MAX_CONTROLNETS", 3, _int_range(1, MAX_CONTROL_UNITS), "most ControlNet units one request may use")
    ip_adapter_dir: Path = _setting(
        "IP_ADAPTER_DIR", Path("models/ip-adapter"), _path,
        "folder of SDXL IP-Adapter weights (.safetensors) with their CLIP image encoder in image_encoder/; absent: none",
    )
    controlnet_cache: int = _setting("CONTROLNET_CACHE", 2, _int_range(1, 64), "ControlNets kept loaded (least recently used unloaded first)")
    annotator_dir: Path = _setting(
        "ANNOTATOR_DIR", Path("models/annotators"), _path,
        "folder of the depth, pose and segmentation models (transformers folders) the preprocessors of those names run",
    )
    annotator_device: str = _setting("ANNOTATOR_DEVICE", "cpu", _device, "where the annotator models run: cpu (default), auto, cuda, cuda:N or mps")

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
    keys_file: Path | None = _setting(
        "KEYS_FILE", None, lambda raw: _path(raw) if raw.strip() else None,
        "TOML file of named API keys (hashes, scopes, limits) for many users; re-read when it changes. "
        "Each key sees only its own jobs and results (python -m sdxl_server keys add NAME)",
    )
    outputs_need_key: bool = _setting(
        "OUTPUTS_NEED_KEY", False, _bool, "with API_KEY: /outputs/ needs the key too (header or ?token=)"
    )
    url_ttl: float = _setting(
        "URL_TTL", 3600.0, _float_range(10.0, 7 * 86400.0),
        "seconds a signed or presigned output URL stays valid (private results, object storage)",
    )
    cors_origins: tuple[str, ...] = _setting(
        "CORS_ORIGINS", (), _origins, "comma-separated origins allowed to call the API from a browser ('*': any)"
    )
    trusted_proxies: Networks = _setting(
        "TRUSTED_PROXIES", Networks(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1")), _networks,
        "comma-separated proxy IPs/networks whose X-Forwarded-Proto/-Host and Forwarded headers are believed",
    )
    public_url: str | None = _setting(
        "PUBLIC_URL", None, _public_url,
        "the server's public base URL (e.g. https://images.example.com), for absolute URLs and the origin check",
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

    # Webhooks (docs/operations.md)
    webhook_url: str | None = _setting(
        "WEBHOOK_URL", None, _webhook_url, "where jobs report that name no webhook (every route: OpenAI's and A1111's too)"
    )
    webhook_secret: str | None = _setting(
        "WEBHOOK_SECRET", None, _webhook_secret, "the Standard Webhooks key (whsec_...) every delivery is signed with"
    )
    webhook_allow: WebhookAllow = _setting(
        "WEBHOOK_ALLOW", WebhookAllow(), _webhook_allow,
        "hosts (*.example.com) and IP networks webhooks may reach although private, loopback or link-local",
    )
    webhook_progress_interval: float = _setting(
        "WEBHOOK_PROGRESS_INTERVAL", 5.0, _float_range(0.1, 3600.0), "seconds between a job's progress webhooks"
    )
    webhook_timeout: float = _setting(
        "WEBHOOK_TIMEOUT", 10.0, _float_range(0.5, 300.0), "seconds one delivery may take (connect, send, answer)"
    )
    webhook_retry_for: float = _setting(
        "WEBHOOK_RETRY_FOR", 86400.0, _float_range(0.0, 30 * 86400.0),
        "seconds a failing delivery is retried (exponential backoff with jitter) before it is given up",
    )
    webhook_redirects: int = _setting(
        "WEBHOOK_REDIRECTS", 0, _int_range(0, 10), "redirects a delivery follows (each target checked again; 0: none)"
    )

    # Server
    host: str = _setting("HOST", "0.0.0.0", lambda raw: raw.strip() or "0.0.0.0", "address to listen on")
    port: int = _setting("PORT", 8001, _int_range(0, 65535), "port to listen on")
    output_dir: Path = _setting("OUTPUT_DIR", Path("outputs"), _path, "where images and metadata are written")
    save_inputs: bool = _setting(
        "SAVE_INPUTS", False, _bool, "keep input images and masks in OUTPUT_DIR/inputs after their job ends"
    )
    output_store: str | None = _setting(
        "OUTPUT_STORE", None, _output_store,
        "s3://bucket/prefix: images, metadata and queued jobs' inputs in an S3-compatible bucket (the 's3' extra); "
        "unset: OUTPUT_DIR",
    )
    s3_endpoint_url: str | None = _setting(
        "S3_ENDPOINT_URL", None, _public_url, "the S3 server for OUTPUT_STORE when not AWS (SeaweedFS, MinIO, R2 ...)"
    )
    s3_region: str | None = _setting("S3_REGION", None, _optional_str, "the bucket's region (unset: AWS_REGION, the profile's)")
    output_public_url: str | None = _setting(
        "OUTPUT_PUBLIC_URL", None, _public_url,
        "with OUTPUT_STORE: the bucket's public or CDN URL (objects at URL/prefix/images/ID.png); unset: presigned URLs",
    )
    log_level: str = _setting(
        "LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"), "logging level"
    )

    # Scale-out (docs/scaling-out.md)
    backend: str = _setting(
        "BACKEND", "local", _choice("local", "ray"),
        "local: one worker thread runs the pipeline; ray: a Ray Serve deployment, one replica per GPU",
    )
    ray_address: str | None = _setting(
        "RAY_ADDRESS", None, _optional_str, "an existing Ray cluster (host:port or ray://host:port); unset: start a local Ray"
    )
    ray_replicas: int = _setting("RAY_REPLICAS", 1, _int_range(1, 4096), "replicas of the pipeline (without autoscaling)")
    ray_min_replicas: int = _setting(
        "RAY_MIN_REPLICAS", 0, _int_range(0, 4096), "with RAY_MAX_REPLICAS: autoscale from this many replicas"
    )
    ray_max_replicas: int = _setting(
        "RAY_MAX_REPLICAS", 0, _int_range(0, 4096), "autoscale up to this many replicas (0: no autoscaling, RAY_REPLICAS)"
    )
    ray_gpus_per_replica: float = _setting(
        "RAY_GPUS_PER_REPLICA", 1.0, _float_range(0.0, 64.0), "GPUs each replica holds (0: CPU replicas, for tests)"
    )

    def __post_init__(self) -> None:
        self._check_concurrency()
        # Given in code (Settings(...), replace()) rather than parsed: the same forms as parsed.
        for name, parse in (("trusted_proxies", _networks), ("public_url", _public_url), ("webhook_allow", _webhook_allow)):
            value = getattr(self, name)
            if value is None or isinstance(value, (Networks, WebhookAllow)):
                continue
            text = value if isinstance(value, str) else ",".join(map(str, value))
            try:
                object.__setattr__(self, name, parse(text))
            except ValueError:
                raise ConfigError(f"{name.upper()}={text!r} is not valid: expected {parse.accepts}") from None  # type: ignore[attr-defined]
        for name, limit in (("DEFAULT_WIDTH", "MAX_WIDTH"), ("DEFAULT_HEIGHT", "MAX_HEIGHT"), ("DEFAULT_STEPS", "MAX_STEPS")):
            value, maximum = getattr(self, name.lower()), getattr(self, limit.lower())
            if value > maximum:
                raise ConfigError(f"{name}={value} is above {limit}={maximum}: lower it or raise {limit}")
        for name in ("DEFAULT_WIDTH", "DEFAULT_HEIGHT", "MAX_WIDTH", "MAX_HEIGHT"):
            value = getattr(self, name.lower())
            if value % 8:
                raise ConfigError(f"{name}={value} is not a multiple of 8: SDXL sizes are multiples of 8")

    def _check_concurrency(self) -> None:
        if self.ray_max_replicas and self.ray_min_replicas > self.ray_max_replicas:
            raise ConfigError(
                f"RAY_MIN_REPLICAS={self.ray_min_replicas} is above RAY_MAX_REPLICAS={self.ray_max_replicas}"
            )
        if self.backend == "local" and self.max_concurrency > 1:
            raise ConfigError(
                f"MAX_CONCURRENCY={self.max_concurrency} needs BACKEND=ray: one GPU runs one generation at a time "
                "(a second in parallel only slows both and risks out-of-memory); queue more with QUEUE_SIZE"
            )
        if self.backend == "ray" and self.max_concurrency > self.replicas_total:
            raise ConfigError(
                f"MAX_CONCURRENCY={self.max_concurrency} is above the {self.replicas_total} Ray replica(s): "
                "each replica runs one generation at a time; raise RAY_REPLICAS (or RAY_MAX_REPLICAS)"
            )

    @property
    def replicas_total(self) -> int:
        """The most Ray replicas that may run (RAY_MAX_REPLICAS when autoscaling, else RAY_REPLICAS)."""
        return self.ray_max_replicas or self.ray_replicas

    @property
    def concurrency(self) -> int:
        """Jobs that run at once: MAX_CONCURRENCY, or (0) 1 locally and the replicas' total on Ray."""
        if self.backend == "local":
            return 1
        return self.max_concurrency or self.replicas_total

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
