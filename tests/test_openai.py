"""The real ``openai`` package, pointed at this server, generates images."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image
from yarl import URL

from tests.wsclient import events_until, events_until_terminal, next_event

KEY = "sk-local-test"


@pytest.fixture
def settings(settings):
    return settings.replace(api_key=KEY)


@pytest.fixture
async def ai(client):
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=KEY, max_retries=0) as ai:
        yield ai


async def test_url_response(ai, client):
    result = await ai.images.generate(prompt="a red fox", size="128x64", model="dall-e-3", quality="hd", style="vivid", user="u1")
    assert len(result.data) == 1 and result.created > 0
    url = result.data[0].url
    assert url.startswith(str(client.make_url("/outputs/images/")))
    resp = await client.get(URL(url).path)
    assert resp.status == 200
    image = Image.open(io.BytesIO(await resp.read()))
    assert image.size == (128, 64)


async def test_b64_json_with_several_images(ai):
    result = await ai.images.generate(prompt="two foxes", n=2, size="64x64", response_format="b64_json")
    assert len(result.data) == 2
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in result.data]
    assert all(image.format == "PNG" and image.size == (64, 64) for image in images)
    assert images[0].tobytes() != images[1].tobytes()
    assert "Seed:" in images[0].text["parameters"]


async def test_bad_size_is_an_openai_shaped_400(ai):
    for size in ("0x64", "big", "\u0666\u0664x\u0666\u0664", "６４x６４", "64x64\n", "64x64 ", "64x"):
        with pytest.raises(openai.BadRequestError) as info:
            await ai.images.generate(prompt="x", size=size)
        assert info.value.status_code == 400
        assert info.value.param == "size" and info.value.type == "invalid_request_error"
        assert "WIDTHxHEIGHT" in info.value.body["message"]
    for n in (0, 11):
        with pytest.raises(openai.BadRequestError) as info:
            await ai.images.generate(prompt="x", n=n)
        assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError) as info:
        await ai.images.generate(prompt="x", size="64x64", model="gpt-image-1", output_format="gif")
    assert info.value.param == "output_format"


async def test_sizes_are_fitted_into_the_limits_and_reported(ai):
    # The test server allows 512x512 at most: DALL·E 3's wide size keeps its shape.
    for asked, made in (("1792x1024", (512, 296)), ("1024x1792", (296, 512)), ("100x100", (104, 104)), ("4096x4096", (512, 512))):
        result = await ai.images.generate(prompt="a fox", size=asked, response_format="b64_json", extra_body={"steps": 1})
        image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
        assert image.size == made and result.size == f"{made[0]}x{made[1]}"


async def test_unknown_fields_and_nulls_are_accepted(ai, caplog):
    with caplog.at_level("INFO", logger="sdxl_server.api.openai"):
        result = await ai.images.generate(
            prompt="x", size=None, n=None, response_format=None, model="dall-e-3",
            extra_body={"safety_identifier": "user-1", "steps": 1},
        )
    assert len(result.data) == 1 and result.data[0].url and result.size == "64x64"
    assert "safety_identifier" in caplog.text


async def test_gpt_image_models_get_base64_in_the_format_asked(ai):
    result = await ai.images.generate(prompt="a fox", model="gpt-image-1", size="64x64", extra_body={"steps": 1})
    assert result.data[0].url is None and result.output_format == "png" and result.background == "opaque"
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).format == "PNG"
    for fmt, pil in (("jpeg", "JPEG"), ("webp", "WEBP")):
        sizes = []
        for compression in (100, 10):
            result = await ai.images.generate(prompt="a fox", model="gpt-image-1", size="64x64", output_format=fmt,
                                              output_compression=compression, quality="high", extra_body={"steps": 1, "seed": 5})
            blob = base64.b64decode(result.data[0].b64_json)
            assert Image.open(io.BytesIO(blob)).format == pil and result.output_format == fmt and result.quality == "high"
            sizes.append(len(blob))
        assert sizes[0] > sizes[1]  # compression is honoured


async def test_more_images_than_max_batch_take_several_pipeline_calls(ai, client):
    result = await ai.images.generate(prompt="many foxes", n=10, size="64x64", response_format="b64_json",
                                      extra_body={"steps": 1, "seed": 100})
    assert len(result.data) == 10
    seeds = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))).text["parameters"].split("Seed: ")[1].split(",")[0]
             for item in result.data]
    assert seeds == [str(100 + i) for i in range(10)]


async def test_a_prompt_longer_than_max_prompt_length_is_cut(ai):
    result = await ai.images.generate(prompt="fox " * 1000, size="64x64", response_format="b64_json", extra_body={"steps": 1})
    assert len(result.data) == 1
    with pytest.raises(openai.BadRequestError) as info:
        await ai.images.generate(prompt="x" * 4001)
    assert info.value.param == "prompt"


async def test_bad_key_is_an_authentication_error(client):
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="wrong", max_retries=0) as ai:
        with pytest.raises(openai.AuthenticationError) as info:
            await ai.images.generate(prompt="x")
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


async def test_models_lists_the_loaded_model(ai):
    models = await ai.models.list()
    assert [model.id for model in models.data] == ["tiny"]


async def test_our_own_fields_pass_through(ai):
    result = await ai.images.generate(
        prompt="extended", size="64x64", response_format="b64_json",
        extra_body={"seed": 77, "steps": 2, "negative_prompt": "blur", "scheduler": "euler_a"},
    )
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert "Seed: 77" in image.text["parameters"] and "Steps: 2, Sampler: Euler a" in image.text["parameters"]


async def test_a_prompt_of_zero_width_characters_is_empty(ai):
    with pytest.raises(openai.BadRequestError) as info:
        await ai.images.generate(prompt="\u200b\u200c\u200d\u2060\ufeff", size="64x64")
    assert info.value.param == "prompt" and info.value.type == "invalid_request_error"


async def test_a_model_that_failed_to_load_is_not_listed(make_client, settings):
    client = await make_client(settings.replace(model_id="/nonexistent/sdxl-model"))
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=KEY, max_retries=0) as ai:
        models = await ai.models.list()
    assert models.data == []


async def _image_url(client, headers=None) -> str:
    resp = await client.post(
        "/v1/images/generations", json={"prompt": "where am I", "size": "64x64", "steps": 1},
        headers={"Authorization": f"Bearer {KEY}", **(headers or {})},
    )
    assert resp.status == 200, await resp.text()
    return (await resp.json())["data"][0]["url"]


async def test_public_url_makes_image_urls_whatever_the_host_header(make_client, settings):
    client = await make_client(settings.replace(public_url="https://images.example.com/sdxl/"))
    url = await _image_url(client, {"Host": "attacker.example", "X-Forwarded-Host": "attacker.example"})
    assert url.startswith("https://images.example.com/sdxl/outputs/images/") and url.endswith(".png")
    resp = await client.get(URL(url).path.removeprefix("/sdxl"))
    assert resp.status == 200


async def test_image_urls_follow_a_trusted_proxy_and_only_a_trusted_one(make_client, settings):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "images.example.com"}
    client = await make_client(settings)  # the test client is on loopback: trusted by default
    assert (await _image_url(client, forwarded)).startswith("https://images.example.com/outputs/images/")
    rfc7239 = {"Forwarded": "for=198.51.100.7;host=images.example.com:8443;proto=https"}
    assert (await _image_url(client, rfc7239)).startswith("https://images.example.com:8443/outputs/images/")
    await client.close()

    client = await make_client(settings.replace(trusted_proxies=()))
    url = await _image_url(client, forwarded)
    assert url.startswith(f"http://{client.host}:{client.port}/outputs/images/")


async def test_without_an_api_key_any_key_works(make_client, settings):
    client = await make_client(settings.replace(api_key=None))
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="anything", max_retries=0) as ai:
        result = await ai.images.generate(prompt="a fox", model="gpt-image-1", size="1536x1024", extra_body={"steps": 1})
    assert result.size == "512x344" and Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (512, 344)


async def test_more_images_than_the_request_limit_are_refused_naming_n(make_client, settings):
    client = await make_client(settings.replace(max_request_images=4))
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=KEY, max_retries=0) as ai:
        with pytest.raises(openai.BadRequestError) as info:
            await ai.images.generate(prompt="x", n=5, size="64x64")
        assert info.value.param == "n" and "MAX_REQUEST_IMAGES" in info.value.body["message"]
        result = await ai.images.generate(prompt="x", n=4, size="64x64", extra_body={"steps": 1})
        assert len(result.data) == 4


async def test_each_image_carries_the_prompt_as_used(ai):
    """Home Assistant's generate_image and LibreChat's DALL·E 3 tool read ``revised_prompt``."""
    result = await ai.images.generate(prompt="a red fox", size="64x64", n=2, extra_body={"steps": 1})
    assert [item.revised_prompt for item in result.data] == ["a red fox", "a red fox"]


def test_the_prompt_as_used_has_no_lora_tags():
    from sdxl_server.api.loras import prompt_as_used

    assert prompt_as_used("a red fox, <lora:ink:0.7> night", "a1111") == "a red fox, night"
    assert prompt_as_used("a red fox, <lora:ink:0.7>", "plain") == "a red fox, <lora:ink:0.7>"


async def test_a_size_whose_shape_cannot_be_kept_is_refused_naming_what_can_be_made(ai):
    """1000x7 was stretched to 512x64 (the limits here are 512x512, sides at least 64)."""
    for size in ("1000x7", "7x1000"):
        with pytest.raises(openai.BadRequestError) as info:
            await ai.images.generate(prompt="x", size=size)
        assert info.value.param == "size" and "512x64 (8:1)" in info.value.body["message"]
    result = await ai.images.generate(prompt="x", size="1000x125", response_format="b64_json", extra_body={"steps": 1})
    assert result.size == "512x64"  # 8:1, the widest shape the limits hold


async def _events(stream) -> list:
    return [event async for event in stream]


def _decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def test_a_streamed_generation_sends_partial_images_then_the_image(ai):
    stream = await ai.images.generate(prompt="a fox", size="128x64", stream=True, partial_images=2,
                                      extra_body={"steps": 6})
    events = await _events(stream)
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    images = [_decoded(event.b64_json) for event in events]
    assert all(image.format == "PNG" and image.size == (128, 64) for image in images)
    assert "Seed:" in images[-1].text["parameters"]  # the stored image itself
    done = events[-1]
    assert done.size == "128x64" and done.output_format == "png" and done.background == "opaque" and done.created_at > 0
    assert done.usage.total_tokens == 0


async def test_a_streamed_edit_sends_partial_images_then_the_image(ai):
    source = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(source, format="PNG")
    stream = await ai.images.edit(image=("fox.png", source.getvalue(), "image/png"), prompt="a blue fox", stream=True,
                                  partial_images=1, output_format="webp", extra_body={"steps": 8})
    events = await _events(stream)
    assert [event.type for event in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert all(_decoded(event.b64_json).format == "WEBP" for event in events)
    assert events[-1].size == "64x64" and events[-1].output_format == "webp"


async def test_a_stream_without_partial_images_is_one_event(ai):
    events = await _events(await ai.images.generate(prompt="a fox", size="64x64", stream=True, extra_body={"steps": 2}))
    assert [event.type for event in events] == ["image_generation.completed"]
    assert _decoded(events[0].b64_json).size == (64, 64)


async def test_stream_refusals_name_their_field(ai):
    with pytest.raises(openai.BadRequestError) as info:
        await ai.images.generate(prompt="x", n=2, stream=True)
    assert info.value.param == "stream" and "n=1" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        await ai.images.generate(prompt="x", stream=True, partial_images=4)
    assert info.value.param == "partial_images"
    with pytest.raises(openai.BadRequestError) as info:
        await ai.images.edit(image=("a.png", b"x", "image/png"), prompt="x", stream=True, partial_images=-1)
    assert info.value.param == "partial_images"


async def test_a_job_that_fails_mid_stream_is_an_error_event(make_client, settings):
    from tests.doubles import FaultyUnetEngine

    client = await make_client(settings, engine_factory=lambda s: FaultyUnetEngine(s, RuntimeError("boom"), at_call=5))
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=KEY, max_retries=0) as ai:
        stream = await ai.images.generate(prompt="a fox", size="64x64", stream=True, partial_images=1,
                                          extra_body={"steps": 8})
        seen = []
        with pytest.raises(openai.APIError) as info:
            async for event in stream:
                seen.append(event.type)
    assert seen == ["image_generation.partial_image"]  # sent before the UNet failed at its 5th call
    assert info.value.body["type"] == "server_error" and info.value.body["message"]


async def test_a_client_that_leaves_mid_stream_leaves_the_job_running(client, caplog):
    caplog.set_level("INFO", logger="sdxl_server.api.openai_stream")
    headers = {"Authorization": f"Bearer {KEY}"}
    async with client.ws_connect("/api/v1/ws", headers=headers) as ws:
        await next_event(ws)  # the snapshot: subscribed before the job is queued
        resp = await client.post("/v1/images/generations", headers=headers, json={
            "prompt": "a fox", "size": "64x64", "stream": True, "partial_images": 3, "steps": 30})
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        line = await resp.content.readline()
        assert line == b"event: image_generation.partial_image\n"
        resp.close()  # the client leaves after its first partial image
        job_id = (await events_until(ws, lambda e: e["type"] == "queued"))[-1]["id"]
        ended = await events_until_terminal(ws, job_id)
    assert ended[-1]["type"] == "completed"
    job = await (await client.get(f"/api/v1/jobs/{job_id}", headers=headers)).json()
    assert job["status"] == "succeeded"
    assert f"the client of streamed job {job_id} left; the job goes on" in caplog.text


async def test_a_stream_whose_job_a_shutdown_keeps_queued_ends_with_an_error_event(make_client, settings):
    """A shutdown suspends the running job (it runs again at the next start): the stream says so
    with OpenAI's error event instead of waiting for an end that will not come."""
    import asyncio

    from doubles import GatedEngine

    from sdxl_server.api import keys

    engine = None

    def gated(s):
        nonlocal engine
        engine = GatedEngine(s)
        return engine

    client = await make_client(settings.replace(api_key=KEY), engine_factory=gated)
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=KEY, max_retries=0) as ai:
        stream = await ai.images.generate(prompt="a fox", size="64x64", stream=True, extra_body={"steps": 2})
        events = asyncio.ensure_future(_events(stream))
        await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)  # the job runs
        await client.app[keys.QUEUE].stop(grace_s=0)  # as SIGTERM's drain does
        with pytest.raises(openai.APIError) as info:
            await asyncio.wait_for(events, 60)
        assert "shutting down" in str(info.value)
