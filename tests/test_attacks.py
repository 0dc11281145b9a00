"""Input built to hurt the server: every text a client sends that a pattern reads is read in linear
time, names and numbers of absurd length are refused with a clear error naming the field, and the
routes stay responsive meanwhile."""

from __future__ import annotations

import time

import pytest

from sdxl_server.api.a1111_probes import parse_infotext
from sdxl_server.api.forwarded import _host
from sdxl_server.pipeline.model_catalog import MAX_MODEL_NAME, without_hash
from sdxl_server.pipeline.prompt_syntax import extract_loras, parse_attention

# Generous: each takes milliseconds once it is linear, seconds to hours if not. CPU time of this
# thread, so that other processes sharing the machine's cores do not count.
BOUND_S = 0.5
N = 100_000
SPACES = " " * N


def _prompt_cases() -> list[str]:
    return [
        SPACES + "x", "(a:" + SPACES + "1", "(a:1" + SPACES + "x", "<lora:a:" * (N // 8), "<lora:" + SPACES,
        "(" * N, "(a" * (N // 2), "[(" * (N // 2), ":" * N, ")" * N, "\\(" * (N // 2), "(a)" * (N // 3),
        "BREAK " * (N // 6), "(" * 32 + "(a)" * (N // 3),
    ]


# Every function that runs a regular expression over client text, with input that made the old
# patterns backtrack (quadratically, or worse).
CASES = [
    *[("prompt syntax", parse_attention, text) for text in _prompt_cases()],  # attention_problem's parse too
    *[("lora tags", extract_loras, text) for text in _prompt_cases()],
    *[("model name", without_hash, text) for text in (SPACES, "a" + SPACES + "b", SPACES + "[01234567]", "a [" + "0" * N)],
    *[("png-info", parse_infotext, "prompt\n" + text) for text in (
        SPACES + "x", SPACES + ":" + SPACES, "Steps: 1," + SPACES, 'a:"' + '\\"' * (N // 2), 'k:"a,' * (N // 5), "a: " * (N // 3),
    )],
    *[("forwarded host", _host, text) for text in ("a" * N, "a." * (N // 2) + "!", ("a" * 62 + ".") * (N // 63) + "-", "[" + ":" * N)],
]


@pytest.mark.parametrize(("what", "function", "text"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_client_text_is_read_in_linear_time(what, function, text):
    started = time.thread_time()
    function(text)
    assert time.thread_time() - started < BOUND_S, what


def test_a1111_hash_suffix_is_still_taken_off():
    assert without_hash("  sd_xl_base_1.0.safetensors [31e35c80fc]  ") == "sd_xl_base_1.0.safetensors"
    assert without_hash("name [1234567]") == "name [1234567]"  # 7 digits: not a hash
    assert without_hash("name [notahash]") == "name [notahash]"


LONG_NAME = "a" + " " * 60_000 + "b"  # the report's 60 KB, within the JSON body limit


async def test_a_long_model_name_is_refused_at_once_naming_the_field(client):
    cases = [
        ("/api/v1/generate", {"prompt": "x", "model": LONG_NAME}, 422, "model"),
        ("/sdapi/v1/options", {"sd_model_checkpoint": LONG_NAME}, 422, "sd_model_checkpoint"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": LONG_NAME}}, 422, "override_settings"),
        ("/v1/images/generations", {"prompt": "x", "model": LONG_NAME}, 400, "model"),
    ]
    for path, body, status, field in cases:
        started = time.perf_counter()
        resp = await client.post(path, json=body)
        elapsed = time.perf_counter() - started
        error = await resp.json()
        assert resp.status == status, (path, error)
        named = error["error"]["param"] if path.startswith("/v1") else list(error["fields"])
        assert field in named and str(MAX_MODEL_NAME) in str(error), (path, error)
        assert elapsed < 5, (path, elapsed)  # it took 9-12 s


async def test_a_long_name_just_under_the_limit_is_looked_up_quickly(client):
    name = "a" + " " * (MAX_MODEL_NAME - 2) + "b"
    started = time.perf_counter()
    resp = await client.post("/api/v1/generate", json={"prompt": "x", "model": name})
    assert resp.status == 422 and "Unknown model" in str((await resp.json())["fields"]["model"])
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("size", ["9" * 5000 + "x64", "64x" + "9" * 5000, "1000000x64"])
async def test_a_size_with_thousands_of_digits_is_a_400_naming_size(client, size):
    resp = await client.post("/v1/images/generations", json={"prompt": "x", "size": size})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "size"
