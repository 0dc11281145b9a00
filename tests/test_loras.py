"""LoRAs through diffusers' PEFT integration: both file layouts, per job (the next job without one
gets the untouched base), weights, <lora:...> tags, listings, bad files and limits (422)."""

from __future__ import annotations

import io
import json
import struct
import time

import pytest
from images import generate_png, pixels
from lora_builder import lora_weights, save_diffusers_layout, save_kohya_layout, write_fake_safetensors
from PIL import Image

from sdxl_server.pipeline.lora_files import a1111_hash
from sdxl_server.pipeline.prompt_syntax import MAX_LORA_TAGS

BODY = {"prompt": "a lighthouse", "seed": 7}


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("loras")
    save_diffusers_layout(lora_weights(tiny_model_dir, seed=1), folder / "ink.safetensors")
    save_kohya_layout(lora_weights(tiny_model_dir, seed=2), folder / "film_grain.safetensors")
    save_kohya_layout(lora_weights(tiny_model_dir, seed=3), folder / "old.safetensors", base_model="sd_v1")
    write_fake_safetensors(folder / "not_a_lora.safetensors", {"model.diffusion_model.conv_in.weight": [4, 4]})
    (folder / "broken.safetensors").write_bytes(b"garbage")
    return folder


@pytest.fixture
def lora_settings(settings, lora_dir):
    return settings.replace(lora_dir=lora_dir, lora_cache=2, max_loras=2)


@pytest.fixture
async def lora_client(make_client, lora_settings):
    return await make_client(lora_settings)


async def test_a_lora_changes_the_image_and_the_next_job_gets_the_untouched_base(make_client, lora_settings):
    fresh = await make_client(lora_settings)
    never_saw_one = await pixels(fresh, BODY)
    await fresh.close()
    client = await make_client(lora_settings)
    for name in ("ink", "film_grain"):  # diffusers layout, kohya layout
        with_lora = await pixels(client, {**BODY, "loras": [{"name": name, "weight": 1.0}]})
        assert with_lora != never_saw_one, name
        assert await pixels(client, BODY) == never_saw_one, name


async def test_weights_matter_and_a_job_is_reproducible(lora_client):
    half = await pixels(lora_client, {**BODY, "loras": [{"name": "ink", "weight": 0.5}]})
    full = await pixels(lora_client, {**BODY, "loras": [{"name": "ink", "weight": 1.0}]})
    assert half != full
    both = await pixels(lora_client, {**BODY, "loras": [{"name": "ink", "weight": 0.5}, {"name": "film_grain", "weight": 0.7}]})
    assert both not in (half, full)
    assert await pixels(lora_client, {**BODY, "loras": [{"name": "ink", "weight": 0.5}]}) == half


async def test_a_lora_tag_in_an_a1111_prompt_is_applied_and_recorded(lora_client, lora_dir):
    tagged = await lora_client.post("/sdapi/v1/txt2img", json={**BODY, "prompt": "a lighthouse <lora:ink:0.8>", "steps": 3, "width": 64, "height": 64})
    assert tagged.status == 200, await tagged.text()
    data = await tagged.json()
    import base64
    import json
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    same = await pixels(lora_client, {**BODY, "loras": [{"name": "ink", "weight": 0.8}]})
    assert image.convert("RGB").tobytes() == same
    short = a1111_hash(lora_dir / "ink.safetensors")[:12]
    info = json.loads(data["info"])
    assert info["prompt"] == "a lighthouse <lora:ink:0.8>"
    assert f'Lora hashes: "ink: {short}"' in info["infotexts"][0]
    assert image.text["parameters"] == info["infotexts"][0]


async def test_metadata_records_loras_and_hashes(lora_client, lora_dir):
    data, image = await generate_png(lora_client, {**BODY, "prompt": "x <lora:film_grain:0.3>", "loras": [{"name": "ink", "weight": 0.6}]})
    meta = data["meta"]
    assert meta["prompt"] == "x <lora:film_grain:0.3>"
    assert meta["loras"] == [{"name": "film_grain", "weight": 0.3}, {"name": "ink", "weight": 0.6}]
    assert meta["lora_hashes"] == {n: a1111_hash(lora_dir / f"{n}.safetensors")[:12] for n in ("film_grain", "ink")}


async def test_listings_ours_and_a1111s(lora_client, lora_dir):
    ours = {entry["name"]: entry for entry in (await (await lora_client.get("/api/v1/loras")).json())["loras"]}
    assert ours["ink"] == {"name": "ink", "file": "ink.safetensors", "size": (lora_dir / "ink.safetensors").stat().st_size,
                           "layout": "diffusers", "base_model": None, "usable": True, "problem": None,
                           "preset": None, "preset_problem": None}  # no card file beside it
    assert ours["film_grain"]["layout"] == "kohya" and ours["film_grain"]["base_model"] == "sdxl"
    assert ours["old"]["usable"] is False and "sd1" in ours["old"]["problem"]
    assert ours["not_a_lora"]["problem"].startswith("not a LoRA") and ours["broken"]["usable"] is False
    a1111 = await (await lora_client.get("/sdapi/v1/loras")).json()
    assert sorted(entry["name"] for entry in a1111) == ["film_grain", "ink"]
    assert {"name", "alias", "path", "metadata"} <= set(a1111[0])


async def test_refresh_finds_a_new_file(lora_client, lora_dir, tiny_model_dir):
    assert (await lora_client.get("/api/v1/loras")).status == 200
    save_diffusers_layout(lora_weights(tiny_model_dir, seed=4), lora_dir / "late.safetensors")
    try:
        resp = await lora_client.post("/sdapi/v1/refresh-loras")
        assert resp.status == 200 and await resp.json() is None
        assert "late" in [e["name"] for e in await (await lora_client.get("/sdapi/v1/loras")).json()]
    finally:
        (lora_dir / "late.safetensors").unlink()


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"loras": [{"name": "nope"}]}, "loras", ["nope", "ink", "film_grain"]),
        ({"prompt": "a <lora:nope:1>"}, "prompt", ["nope"]),
        ({"prompt": "a <lora:ink:lots>"}, "prompt", ["<lora:ink:lots>"]),
        ({"loras": [{"name": "old"}]}, "loras", ["old", "sd1"]),
        ({"loras": [{"name": "not_a_lora"}]}, "loras", ["not_a_lora", "not a LoRA"]),
        ({"loras": [{"name": "broken"}]}, "loras", ["broken", "unreadable"]),
        ({"loras": [{"name": "ink", "weight": 5.5}]}, "loras", []),
        ({"prompt": "a <lora:ink:-6>"}, "prompt", ["-6"]),
        ({"loras": [{"name": "ink"}, {"name": "film_grain"}, {"name": "x"}]}, "loras", []),
        ({"prompt": "<lora:ink:1> <lora:film_grain:1>", "loras": [{"name": "ink"}, {"name": "old"}]}, "loras", []),
    ],
)
async def test_bad_loras_are_422_naming_them_and_the_server_keeps_serving(lora_client, body, field, words):
    resp = await lora_client.post("/api/v1/generate", json={**BODY, **body})
    assert resp.status == 422, await resp.text()
    error = await resp.json()
    assert field in error["fields"]
    for word in words:
        assert word in error["message"] + str(error["fields"])
    assert len(await pixels(lora_client, BODY)) > 0


async def test_too_many_loras_in_the_prompt_alone_hit_max_loras(lora_client, lora_dir, tiny_model_dir):
    resp = await lora_client.post("/api/v1/generate", json={**BODY, "prompt": "<lora:ink:1><lora:film_grain:1><lora:nope:1>"})
    assert resp.status == 422
    assert "MAX_LORAS" in str((await resp.json())["fields"])


async def test_openai_route_reads_lora_tags(lora_client):
    resp = await lora_client.post("/v1/images/generations", json={"prompt": "a <lora:nope:0.5>"})
    assert resp.status == 400 and "nope" in (await resp.text())  # OpenAI answers bad input with 400


async def test_plain_syntax_leaves_tags_as_text(make_client, lora_settings):
    client = await make_client(lora_settings.replace(prompt_syntax="plain"))
    data, _ = await generate_png(client, {**BODY, "prompt": "a <lora:nope:0.5>"})
    assert data["meta"]["loras"] == [] and data["meta"]["lora_hashes"] == {}


async def test_a_lora_for_another_family_without_metadata_is_422_when_it_meets_the_model(make_client, lora_settings, tmp_path):
    import shutil

    folder = tmp_path / "more-loras"
    shutil.copytree(lora_settings.lora_dir, folder)
    stem = "lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn2_to_k"
    write_fake_safetensors(folder / "sd15_style.safetensors", {  # SD 1.x: 768-wide text conditioning
        f"{stem}.lora_down.weight": [4, 768], f"{stem}.lora_up.weight": [32, 4], f"{stem}.alpha": [],
    })
    client = await make_client(lora_settings.replace(lora_dir=folder))
    before = await pixels(client, BODY)
    resp = await client.post("/api/v1/generate", json={**BODY, "loras": [{"name": "sd15_style"}]})
    assert resp.status == 422, await resp.text()
    error = await resp.json()
    assert "sd15_style" in error["message"] and "SD 1.x" in error["message"] and "loras" in error["fields"]
    assert await pixels(client, BODY) == before
    assert await pixels(client, {**BODY, "loras": [{"name": "ink"}]}) != before


async def test_the_openapi_document_names_the_usable_loras(lora_client):
    spec = await (await lora_client.get("/openapi.json")).json()
    items = spec["components"]["schemas"]["GenerateRequest"]["properties"]["loras"]["items"]
    assert items["properties"]["name"]["enum"] == ["film_grain", "ink"]
    assert items["properties"]["weight"]["minimum"] == -5 and items["properties"]["weight"]["maximum"] == 5


def _raw_safetensors(path, header: bytes) -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header)


async def test_a_header_of_another_shape_makes_one_file_unusable_and_the_rest_work(make_client, lora_settings, tmp_path):
    """Valid JSON of an unexpected shape answered 500 on every listing, refresh, OpenAPI and LoRA request."""
    import shutil

    folder = tmp_path / "odd-loras"
    shutil.copytree(lora_settings.lora_dir, folder)
    key = "lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    odd = {
        "metadata_list": {"__metadata__": ["a"], key: {"dtype": "F32", "shape": [4, 2048], "data_offsets": [0, 0]}},
        "text_shape": {key: {"dtype": "F32", "shape": [4, "2048"], "data_offsets": [0, 0]}},
        "number_shape": {key: {"dtype": "F32", "shape": 4, "data_offsets": [0, 0]}},
        "list_tensor": {key: [1, 2]},
    }
    for name, header in odd.items():
        _raw_safetensors(folder / f"{name}.safetensors", json.dumps(header).encode())
    _raw_safetensors(folder / "deep.safetensors", b"[" * 100_000 + b"]" * 100_000)
    client = await make_client(lora_settings.replace(lora_dir=folder))
    for path in ("/api/v1/loras", "/sdapi/v1/loras", "/openapi.json"):
        assert (await client.get(path)).status == 200, path
    for path in ("/api/v1/loras/refresh", "/sdapi/v1/refresh-loras"):
        assert (await client.post(path)).status == 200, path
    listed = {e["name"]: e for e in (await (await client.get("/api/v1/loras")).json())["loras"]}
    for name in (*odd, "deep"):
        assert listed[name]["usable"] is False and "not a safetensors file" in listed[name]["problem"], listed[name]
    assert listed["ink"]["usable"] is True
    resp = await client.post("/api/v1/generate", json={**BODY, "loras": [{"name": "text_shape"}]})
    assert resp.status == 422 and "not a safetensors file" in str((await resp.json())["fields"]["loras"])
    assert len(await pixels(client, {**BODY, "loras": [{"name": "ink"}]})) > 0


async def test_unknown_lora_tags_cost_one_rescan_and_unchanged_headers_are_not_read_again(make_client, settings, tmp_path):
    """Each unknown name used to re-read every header: with megabytes of metadata, seconds per request."""
    folder = tmp_path / "heavy-loras"
    folder.mkdir()
    metadata = {"ss_base_model_version": "sdxl_base_v1-0", "ss_tag_frequency": "x" * 4_000_000}  # as in the report
    for index in range(20):
        write_fake_safetensors(folder / f"heavy{index}.safetensors",
                               {"unet.mid_block.attentions.0.proj_in.lora_A.weight": [4, 8]}, metadata)
    client = await make_client(settings.replace(lora_dir=folder))
    assert len((await (await client.get("/api/v1/loras")).json())["loras"]) == 20  # the first scan reads them
    prompt = " ".join(f"<lora:missing{i}:1>" for i in range(MAX_LORA_TAGS))
    started = time.perf_counter()
    resp = await client.post("/api/v1/generate", json={**BODY, "prompt": prompt})
    assert resp.status == 422 and "missing0" in str((await resp.json())["fields"]["prompt"])
    assert time.perf_counter() - started < 5  # it took 25 s
    resp = await client.post("/api/v1/generate", json={**BODY, "prompt": prompt + " <lora:one_more:1>"})
    assert resp.status == 422
    assert f"at most {MAX_LORA_TAGS}" in str((await resp.json())["fields"]["prompt"])


async def test_without_the_key_the_openapi_document_names_no_lora_or_model(make_client, lora_settings):
    client = await make_client(lora_settings.replace(api_key="secret-key"))
    anonymous = await (await client.get("/openapi.json")).json()
    request = anonymous["components"]["schemas"]["GenerateRequest"]["properties"]
    assert "enum" not in request["model"] and "film_grain" not in json.dumps(anonymous)
    assert "enum" not in json.dumps(request["loras"])
    spec = await (await client.get("/openapi.json", headers={"Authorization": "Bearer secret-key"})).json()
    items = spec["components"]["schemas"]["GenerateRequest"]["properties"]["loras"]["items"]
    assert items["properties"]["name"]["enum"] == ["film_grain", "ink"]
