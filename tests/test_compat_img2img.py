"""Image to image and inpainting through the compatible APIs: A1111's ``/sdapi/v1/img2img`` and
OpenAI's ``/v1/images/edits`` and ``/v1/images/variations``, the latter with the real ``openai`` client."""

from __future__ import annotations

import base64
import io
import json

import aiohttp
import numpy as np
import openai
import pytest
from images import b64, encode, picture, png_array, right_half_mask
from PIL import Image
from yarl import URL


@pytest.fixture
async def ai(client):
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0) as ai:
        yield ai


async def test_a1111_img2img_with_a_mask_returns_an_image_that_keeps_the_unmasked_half(client):
    source = picture(96, 64)
    body = {
        "init_images": [b64(source)], "mask": b64(right_half_mask(96, 64)), "denoising_strength": 1.0,
        "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False, "inpainting_mask_invert": 0,
        "resize_mode": 0, "prompt": "a lighthouse", "steps": 3, "cfg_scale": 6, "seed": 5, "sampler_name": "Euler a",
        "width": 96, "height": 64, "include_init_images": False, "override_settings": {},
    }
    resp = await client.post("/sdapi/v1/img2img", json=body)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    out = png_array(base64.b64decode(data["images"][0]))
    original, keep = np.asarray(source).astype(int), np.asarray(right_half_mask(96, 64)) == 0
    assert out.shape == (64, 96, 3) and (out[keep] == original[keep]).all()
    info = json.loads(data["info"])
    assert info["denoising_strength"] == 1.0 and info["seed"] == 5
    assert "Denoising strength: 1.0" in info["infotexts"][0] and "Mask blur: 0" in info["infotexts"][0]
    assert data["parameters"]["init_images"] is None  # not echoed unless include_init_images


async def test_a1111_img2img_inverted_mask_full_res_and_the_fills(client):
    source = picture(96, 64)
    for fill in (0, 2, 3):
        resp = await client.post("/sdapi/v1/img2img", json={
            "init_images": [b64(source)], "mask": b64(right_half_mask(96, 64)), "inpainting_mask_invert": 1,
            "inpaint_full_res": True, "inpaint_full_res_padding": 8, "mask_blur": 0, "inpainting_fill": fill,
            "prompt": "x", "steps": 2, "denoising_strength": 1.0, "include_init_images": True,
        })
        assert resp.status == 200, await resp.text()
        data = await resp.json()
        out = png_array(base64.b64decode(data["images"][0]))
        assert (out[:, 48:] == np.asarray(source).astype(int)[:, 48:]).all()  # inverted: the right half is kept
        assert data["parameters"]["init_images"] == [b64(source)]


async def test_a1111_img2img_errors_name_a1111_fields(client):
    resp = await client.post("/sdapi/v1/img2img", json={"init_images": ["nope"], "prompt": "x"})
    assert resp.status == 422
    error = await resp.json()
    assert list(error["fields"]) == ["init_images"] and error["detail"]
    resp = await client.post("/sdapi/v1/img2img", json={"init_images": [b64(picture())], "prompt": "x", "denoising_strength": 0})
    assert list((await resp.json())["fields"]) == ["denoising_strength"]
    resp = await client.post("/sdapi/v1/img2img", json={"prompt": "x"})
    assert list((await resp.json())["fields"]) == ["init_images"]


async def test_openai_edit_with_a_transparent_mask_repaints_only_there(ai, client):
    source = picture(64, 64)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (32, 0, 64, 64))  # transparent right half: the area to edit
    result = await ai.images.edit(
        image=("photo.png", encode(source), "image/png"), mask=("mask.png", encode(mask), "image/png"),
        prompt="a red door", n=1, size="64x64", response_format="b64_json", model="dall-e-2",
        extra_body={"steps": 3},
    )
    out = png_array(base64.b64decode(result.data[0].b64_json))
    original = np.asarray(source).astype(int)
    assert (out[:, :20] == original[:, :20]).all()  # three radii beyond the default mask blur (4)
    assert np.abs(out[:, 36:] - original[:, 36:]).mean() > 1


async def test_openai_edit_without_a_mask_and_several_images(ai, client):
    result = await ai.images.edit(
        image=[("a.png", encode(picture(96, 64)), "image/png"), ("b.png", encode(picture(64, 64)), "image/png")],
        prompt="autumn", n=2, extra_body={"steps": 4},
    )
    assert len(result.data) == 2
    sizes = {Image.open(io.BytesIO(await (await client.get(URL(item.url).path)).read())).size for item in result.data}
    assert sizes == {(96, 64)}  # the first image, at its own size


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks the DALL-E 2 route so
async def test_openai_create_variation(ai, client):
    result = await ai.images.create_variation(image=("p.png", encode(picture(64, 64)), "image/png"), n=1,
                                              size="64x64", response_format="url", extra_body={"steps": 5})
    path = URL(result.data[0].url).path
    image = await (await client.get(path)).read()
    meta = json.loads(await (await client.get(path.replace("/images/", "/metadata/").replace(".png", ".json"))).read())
    assert Image.open(io.BytesIO(image)).size == (64, 64)
    assert meta["prompt"] == "" and meta["strength"] == 0.6 and meta["mode"] == "img2img"


async def test_openai_bad_images_get_openai_errors(ai):
    with pytest.raises(openai.BadRequestError) as caught:
        await ai.images.edit(image=("x.png", b"not a png", "image/png"), prompt="x")
    assert caught.value.body["param"] == "image"
    mask = encode(Image.new("RGBA", (64, 64), (0, 0, 0, 255)))  # nothing transparent: nothing to edit
    with pytest.raises(openai.BadRequestError) as caught:
        await ai.images.edit(image=("x.png", encode(picture(64, 64)), "image/png"), mask=("m.png", mask, "image/png"), prompt="x")
    assert caught.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError) as caught:
        # not a size (65x64 is fitted, as on generations)
        await ai.images.edit(image=("x.png", encode(picture(64, 64)), "image/png"), prompt="x", size="65 x 64")
    assert caught.value.body["param"] == "size"


async def test_a1111_img2img_above_max_batch_runs_every_chunk_on_the_same_inputs(make_client, settings):
    """The first chunk's end must not delete the input the next chunk needs."""
    client = await make_client(settings.replace(max_batch=1))
    resp = await client.post("/sdapi/v1/img2img", json={
        "init_images": [b64(picture(64, 64))], "mask": b64(right_half_mask(64, 64)), "prompt": "x", "steps": 2,
        "denoising_strength": 1.0, "batch_size": 1, "n_iter": 3, "seed": 3,
    })
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert len(data["images"]) == 3 and len(set(json.loads(data["info"])["all_seeds"])) == 3
    assert list((settings.output_dir / "inputs").glob("*.png")) == []  # and then nothing is left behind


def _multipart(*parts: bytes, boundary: str = "XyZ") -> tuple[bytes, dict[str, str]]:
    """A multipart body of raw parts (headers and content as given), as no client library writes it."""
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _text_part(name: str, value: str, content_type: str = "text/plain") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\nContent-Type: {content_type}\r\n\r\n{value}'.encode()


IMAGE_PART = b'Content-Disposition: form-data; name="image"; filename="p.png"\r\nContent-Type: image/png\r\n\r\n' + encode(picture(64, 64))


@pytest.mark.parametrize(("part", "words"), [
    (_text_part("prompt", "x", "text/plain; charset=bogus-charset"), "bogus-charset"),  # a LookupError: it answered 500
    (b"no headers, and no blank line before the content", "headers"),  # not a header line: it answered 500
    (b"\r\nno headers at all", "name"),
])
@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/images/variations"])
async def test_a_multipart_part_that_cannot_be_read_is_a_400(client, path, part, words):
    body, headers = _multipart(part, IMAGE_PART)  # the bad part first: nothing spooled to a file yet
    resp = await client.post(path, data=body, headers=headers)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_body" and words in error["message"]


@pytest.mark.parametrize(("name", "value"), [("size", "9" * 5000 + "x64"), ("n", "9" * 5000), ("guidance_scale", "9" * 5000)])
async def test_a_form_number_with_thousands_of_digits_is_a_400_naming_it(client, name, value):
    body, headers = _multipart(_text_part("prompt", "x"), _text_part(name, value), IMAGE_PART)
    resp = await client.post("/v1/images/edits", data=body, headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == name


@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/images/variations"])
async def test_edit_sizes_of_gpt_image_and_dall_e_3_are_fitted_as_on_generations(client, path):
    """GPT-image's edits document 1536x1024 and 1024x1536; they were refused above the limits (512 here)."""
    for asked, made in (("1536x1024", (512, 344)), ("1024x1536", (344, 512)), ("1792x1024", (512, 296))):
        form = aiohttp.FormData()
        form.add_field("image", encode(picture(64, 64)), filename="a.png", content_type="image/png")
        for name, value in {"prompt": "a fox", "size": asked, "steps": "2", "response_format": "b64_json"}.items():
            form.add_field(name, value)
        resp = await client.post(path, data=form)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["size"] == f"{made[0]}x{made[1]}"
        assert Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))).size == made


@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/images/variations"])
async def test_an_edit_size_whose_shape_cannot_be_kept_is_refused(client, path):
    form = aiohttp.FormData()
    form.add_field("image", encode(picture(64, 64)), filename="a.png", content_type="image/png")
    form.add_field("prompt", "a fox")
    form.add_field("size", "1000x7")
    resp = await client.post(path, data=form)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "size" and "512x64" in error["message"] and "64x512" in error["message"]


async def test_a_small_input_keeps_its_shape_on_the_compatible_routes(client):
    resp = await client.post("/sdapi/v1/img2img", json={"init_images": [b64(picture(56, 64))], "prompt": "x", "steps": 2})
    assert resp.status == 200
    assert Image.open(io.BytesIO(base64.b64decode((await resp.json())["images"][0]))).size == (64, 72)
