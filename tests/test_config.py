"""Settings from the environment and flags, and start-up refusing what cannot work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdxl_server.__main__ import parse_args
from sdxl_server.config import ConfigError, Settings, load_settings
from sdxl_server.pipeline.runtime import resolve_runtime


def test_defaults_are_the_seed_readme_table():
    s = load_settings({})
    assert s.model_id is None
    assert (s.device, s.dtype) == ("auto", "auto")
    assert (s.default_width, s.default_height, s.default_steps, s.default_guidance) == (1024, 1024, 25, 7.0)
    assert (s.max_width, s.max_height, s.max_steps, s.max_concurrency, s.concurrency) == (1280, 1280, 50, 0, 1)
    assert (s.host, s.port, s.output_dir) == ("0.0.0.0", 8001, Path("outputs"))
    assert s.preload is True


def test_on_ray_the_jobs_that_run_at_once_default_to_the_replicas_total():
    assert load_settings({"BACKEND": "ray", "RAY_REPLICAS": "2"}).concurrency == 2
    assert load_settings({"BACKEND": "ray", "RAY_MIN_REPLICAS": "1", "RAY_MAX_REPLICAS": "4"}).concurrency == 4
    assert load_settings({"BACKEND": "ray", "RAY_REPLICAS": "3", "MAX_CONCURRENCY": "2"}).concurrency == 2


def test_environment_then_flags():
    env = {"MODEL_ID": "tiny", "MAX_STEPS": "30", "DTYPE": "fp32", "PRELOAD": "no", "PORT": "9000"}
    _, s = parse_args(["--port", "9001", "--vae-tiling", "on"], env)
    assert s.model_id == "tiny" and s.max_steps == 30 and s.dtype == "float32" and s.preload is False
    assert s.port == 9001  # the flag wins
    assert s.vae_tiling == "on"


def test_every_setting_has_a_flag_and_a_variable():
    import argparse

    from sdxl_server.config import add_arguments, settings_fields

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {action.dest for action in parser._actions}
    for f in settings_fields():
        assert f.name in flags
        assert f.metadata["env"] == f.name.upper()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEVICE": "gpu"}, "DEVICE='gpu' is not valid: expected auto, cpu, cuda, cuda:N or mps"),
        ({"DTYPE": "float64"}, "DTYPE='float64' is not valid: expected auto, float16, bfloat16 or float32"),
        ({"PORT": "eighty"}, "PORT='eighty' is not valid: expected a whole number from 0 to 65535"),
        ({"MAX_CONCURRENCY": "2"}, "MAX_CONCURRENCY=2 needs BACKEND=ray: one GPU runs one generation at a time"),
        ({"MAX_CONCURRENCY": "many"}, "MAX_CONCURRENCY='many' is not valid: expected 0 (auto) or 1"),
        ({"BACKEND": "ray", "RAY_REPLICAS": "2", "MAX_CONCURRENCY": "3"}, "MAX_CONCURRENCY=3 is above the 2 Ray replica(s)"),
        ({"RAY_MIN_REPLICAS": "3", "RAY_MAX_REPLICAS": "2"}, "RAY_MIN_REPLICAS=3 is above RAY_MAX_REPLICAS=2"),
        ({"BACKEND": "dask"}, "BACKEND='dask' is not valid: expected one of local, ray"),
        ({"DEFAULT_GUIDANCE": "nan"}, "DEFAULT_GUIDANCE='nan' is not valid: expected a number from 0 to 30"),
        ({"PRELOAD": "maybe"}, "PRELOAD='maybe' is not valid: expected true or false"),
        ({"CPU_OFFLOAD": "all"}, "CPU_OFFLOAD='all' is not valid: expected one of auto, none, model, group, sequential"),
        ({"DEFAULT_WIDTH": "2048"}, "DEFAULT_WIDTH=2048 is above MAX_WIDTH=1280"),
        ({"MAX_WIDTH": "1300"}, "MAX_WIDTH=1300 is not a multiple of 8"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8,proxy.lan"}, "TRUSTED_PROXIES='10.0.0.0/8,proxy.lan' is not valid: expected"),
        ({"TRUSTED_PROXIES": "10.0.0.1/8"}, "TRUSTED_PROXIES='10.0.0.1/8' is not valid: expected"),
        ({"PUBLIC_URL": "images.example.com"}, "PUBLIC_URL='images.example.com' is not valid: expected"),
        ({"PUBLIC_URL": "ftp://images.example.com"}, "PUBLIC_URL='ftp://images.example.com' is not valid: expected"),
        ({"PUBLIC_URL": "https://images.example.com/?a=1"}, "PUBLIC_URL='https://images.example.com/?a=1' is not valid"),
    ],
)
def test_bad_values_name_the_variable_and_what_it_accepts(env, message):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_trusted_proxies_and_public_url():
    default = load_settings({}).trusted_proxies
    assert str(default) == "127.0.0.0/8,::1"
    assert all(default.covers(a) for a in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"))
    assert not any(default.covers(a) for a in ("10.0.0.1", "::2", "localhost", "", None))
    s = load_settings({"TRUSTED_PROXIES": " 10.0.0.0/8, 192.168.1.7 ,fd00::/8", "PUBLIC_URL": "https://Images.example.com/sdxl/"})
    assert str(s.trusted_proxies) == "10.0.0.0/8,192.168.1.7,fd00::/8"
    assert s.public_url == "https://images.example.com/sdxl"
    assert load_settings({"TRUSTED_PROXIES": ""}).trusted_proxies == ()  # trust no proxy
    assert load_settings({"PUBLIC_URL": ""}).public_url is None


def test_auto_is_cpu_float32_without_cuda():
    runtime = resolve_runtime(Settings())
    assert (runtime.device, runtime.dtype, runtime.cuda_available) == ("cpu", "float32", False)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device": "cuda"}, "DEVICE=cuda but CUDA is not available"),
        ({"device": "cuda:1"}, "DEVICE=cuda:1 but CUDA is not available"),
        ({"cpu_offload": "model"}, "CPU_OFFLOAD=model needs CUDA"),
        ({"attention": "xformers"}, "ATTENTION=xformers needs CUDA"),
    ],
)
def test_options_that_need_cuda_are_refused_without_it(changes, message):
    with pytest.raises(ConfigError, match=message):
        resolve_runtime(Settings(**changes))


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "sdxl_server", *args], env=environ, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        ((), {"DEVICE": "cuda"}, "DEVICE=cuda but CUDA is not available"),
        ((), {"MAX_CONCURRENCY": "4"}, "MAX_CONCURRENCY=4 needs BACKEND=ray"),
        (("--dtype", "int8"), {}, "--dtype='int8' is not valid"),
    ],
)
def test_start_up_stops_with_one_line(args, env, needle):
    done = _run_cli(*args, **env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_ray_address_is_checked_with_a_timeout_in_each_form():
    import socket

    from sdxl_server.jobs.ray_backend import check_reachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")  # a cluster's GCS port answers
        check_reachable(f"ray://127.0.0.1:{port}")  # Ray Client's form
    for address in ("127.0.0.1:9", "ray://127.0.0.1:9"):
        with pytest.raises(ConfigError, match=rf"^RAY_ADDRESS={address}: no Ray cluster answers at 127\.0\.0\.1:9 within 1s"):
            check_reachable(address, timeout_s=1)
    check_reachable("auto")  # Ray finds the cluster itself


def test_caches_follow_xdg_cache_home(monkeypatch, tmp_path):
    """The tiny model and the compile cache go where XDG_CACHE_HOME says, as torch, pip and the Hub's do."""
    from sdxl_server.config import cache_home
    from sdxl_server.pipeline.compiling import compile_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert cache_home() == tmp_path / "xdg" / "sdxl_server"
    assert compile_cache_dir(load_settings({})) == tmp_path / "xdg" / "sdxl_server" / "inductor"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache_dir(load_settings({})) == tmp_path / "home" / ".cache" / "sdxl_server" / "inductor"
