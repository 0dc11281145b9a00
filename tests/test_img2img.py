"""Image to image and inpainting on the tiny model: sizes, steps, untouched pixels, metadata, and
every way an input image can be wrong."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib

import numpy as np
import pytest
from doubles import GatedEngine
from images import b64, encode, picture, png_array, png_file, right_half_mask
from PIL import Image

from sdxl_server.api import keys
from sdxl_server.jobs.inputs import png_bytes


async def _generate(client, **body):
    resp = await client.post("/api/v1/generate", json={"prompt": "a lighthouse", "seed": 7, **body})
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    image = await (await client.get(data["image_url"])).read()
    return data, image


async def test_image_to_image_changes_the_image_and_keeps_its_size(client):
    source = picture(96, 64)
    data, image = await _generate(client, init_image=b64(source), strength=0.9, steps=4)
    assert Image.open(io.BytesIO(image)).size == (96, 64)
    assert (data["meta"]["width"], data["meta"]["height"], data["meta"]["mode"]) == (96, 64, "img2img")
    assert np.abs(png_array(image) - np.asarray(source).astype(int)).mean() > 1  # it was repainted


async def test_a_data_url_and_a_jpeg_work_too(client):
    data, _ = await _generate(client, init_image="data:image/jpeg;base64," + b64(picture(64, 64), "JPEG"), steps=2)
    assert data["meta"]["mode"] == "img2img"


async def _steps_run(client, strength: float) -> int:
    resp = await client.post("/api/v1/jobs", json={"prompt": "x", "init_image": b64(picture(64, 64)), "steps": 10,
                                                   "strength": strength})
    job = await resp.json()
    assert resp.status == 202 and job["total_steps"] == int(10 * strength)
    queued = await client.app[keys.QUEUE].find(job["id"])
    await queued.wait()
    done = await (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert done["status"] == "succeeded", done
    return done["step"]


async def test_strength_0_3_runs_fewer_steps_than_0_9(client):
    low, high = await _steps_run(client, 0.3), await _steps_run(client, 0.9)
    assert (low, high) == (3, 9)


@pytest.mark.parametrize("area", ["whole", "masked"])
async def test_inpainting_leaves_every_unmasked_pixel_identical(client, area):
    source, mask = picture(96, 64), right_half_mask(96, 64)
    data, image = await _generate(client, init_image=b64(source), mask=b64(mask), mask_blur=0, inpaint_area=area,
                                  mask_padding=8, strength=1.0, steps=3)
    out, original, keep = png_array(image), np.asarray(source).astype(int), np.asarray(mask) == 0
    assert (out[keep] == original[keep]).all()
    assert np.abs(out[~keep] - original[~keep]).mean() > 1  # and the masked half was repainted
    assert data["meta"]["mode"] == "inpaint" and data["meta"]["inpaint_area"] == area


async def test_a_blurred_mask_keeps_the_pixels_beyond_its_blur(client):
    source, mask = picture(96, 64), right_half_mask(96, 64)
    _, image = await _generate(client, init_image=b64(source), mask=b64(mask), mask_blur=4, steps=3)
    out, original = png_array(image), np.asarray(source).astype(int)
    assert (out[:, : 48 - 12] == original[:, : 48 - 12]).all()  # three blur radii from the edge


async def test_a_mask_of_another_size_is_resized_and_transparency_marks_the_brush(client):
    source = picture(96, 64)
    brush = Image.new("RGBA", (48, 32), (0, 0, 0, 0))  # a brush layer at half size: opaque = repaint
    brush.paste((255, 255, 255, 255), (24, 0, 48, 32))
    _, image = await _generate(client, init_image=b64(source), mask=b64(brush), mask_blur=0, steps=2, strength=1.0)
    out, original = png_array(image), np.asarray(source).astype(int)
    assert (out[:, :46] == original[:, :46]).all()  # the mask's edge is interpolated when it is scaled up
    assert np.abs(out[:, 48:] - original[:, 48:]).mean() > 1


async def test_metadata_records_the_mode_strength_hashes_and_mask_settings(client):
    source, mask = picture(64, 64), right_half_mask(64, 64)
    data, image = await _generate(client, init_image=b64(source), mask=b64(mask), strength=0.5, steps=4)
    meta = data["meta"]
    assert meta["init_image_sha256"] == hashlib.sha256(png_bytes(source)).hexdigest()
    assert meta["mask_sha256"] == hashlib.sha256(png_bytes(mask)).hexdigest()
    sidecar = json.loads(await (await client.get(data["meta_url"])).read())
    assert sidecar["strength"] == 0.5 and sidecar["mask_blur"] == 4 and "init_image" not in sidecar
    text = Image.open(io.BytesIO(image)).info["parameters"]
    assert "Denoising strength: 0.5" in text and "Mask blur: 4" in text
    assert f"Init image hash: {meta['init_image_sha256']}" in text and f"Mask hash: {meta['mask_sha256']}" in text
    plain, plain_image = await _generate(client, steps=2)
    assert plain["meta"]["mode"] == "txt2img" and "strength" not in plain["meta"]
    assert "Denoising strength" not in Image.open(io.BytesIO(plain_image)).info["parameters"]


@pytest.mark.parametrize(
    ("size", "given", "expected"),
    [
        ((1000, 600), {}, (512, 304)),  # fitted into MAX_WIDTH x MAX_HEIGHT (512), multiples of 8
        ((100, 60), {}, (104, 64)),  # rounded to multiples of 8
        ((56, 64), {}, (64, 72)),  # a side under 64 scaled up keeping the shape, not stretched to 64x64
        ((20, 40), {}, (64, 128)),
        ((100, 50), {"width": 128}, (128, 64)),  # one side given: the other keeps the aspect ratio
        ((100, 50), {"width": 64, "height": 64, "resize_mode": 1}, (64, 64)),
        ((100, 50), {"width": 64, "height": 64, "resize_mode": 2}, (64, 64)),
    ],
)
async def test_the_output_size_follows_the_input(client, size, given, expected):
    data, image = await _generate(client, init_image=b64(picture(*size)), steps=1, strength=1.0, **given)
    assert Image.open(io.BytesIO(image)).size == expected == (data["meta"]["width"], data["meta"]["height"])


async def test_exif_rotation_is_applied(client):
    upright = picture(64, 96)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: "turn 90 degrees clockwise to view"
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    data, _ = await _generate(client, init_image=b64(encode(stored, "JPEG", exif=exif.tobytes())), steps=2)
    assert (data["meta"]["width"], data["meta"]["height"]) == (64, 96)


def _exif(*entries: tuple[int, int, int, bytes]) -> bytes:
    """An EXIF block of big-endian TIFF entries (tag, type, count, value), written by hand: Pillow
    would not write a mistyped one."""
    head, fields, data = b"MM\x00*" + struct.pack(">IH", 8, len(entries)), b"", b""
    for tag, kind, count, value in entries:  # a value over 4 bytes goes after the IFD, at its offset
        inline = value.ljust(4, b"\0") if len(value) <= 4 else struct.pack(">I", 14 + 12 * len(entries) + len(data))
        data += value if len(value) > 4 else b""
        fields += struct.pack(">HHI", tag, kind, count) + inline
    return b"Exif\0\0" + head + fields + b"\0\0\0\0" + data


@pytest.mark.parametrize("odd", [
    (0x011A, 2, 4, b"abc\0"),  # XResolution as text: TypeError writing the EXIF back
    (0x0100, 2, 4, b"abc\0"),  # ImageWidth as text: struct.error
    (0x010D, 5, 1, struct.pack(">II", 1, 0)),  # DocumentName as a rational: AttributeError
    (0x0106, 3, 3, b"\0\1\0\2\0\3"),  # PhotometricInterpretation, three of them: KeyError
])
async def test_a_jpeg_with_odd_exif_is_used_as_stored(client, odd):
    """Orientation 6 beside a mistyped tag answered 500 on every image route; the EXIF is ignored."""
    jpeg = encode(picture(96, 64), "JPEG", exif=_exif((0x0112, 3, 1, b"\0\6"), odd))
    data, _ = await _generate(client, init_image=b64(jpeg), steps=2)
    assert (data["meta"]["width"], data["meta"]["height"]) == (96, 64)  # not rotated


async def test_a_jpeg_with_a_multi_picture_index_gives_its_first_picture(client):
    """Phones save Ultra HDR photos with a Multi-Picture index (Pillow's MPO); they were refused."""
    mpo = encode(picture(96, 64), "MPO", save_all=True, append_images=[Image.new("RGB", (32, 32))])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    data, _ = await _generate(client, init_image=b64(mpo), steps=2)
    assert (data["meta"]["width"], data["meta"]["height"]) == (96, 64)


async def test_an_animated_image_gives_its_first_frame_and_modes_are_converted(client):
    first, second = picture(64, 64), Image.new("RGB", (64, 64), (0, 0, 255))
    animated = encode(first, "PNG", save_all=True, append_images=[second])
    data, _ = await _generate(client, init_image=b64(animated), steps=2)
    assert data["meta"]["init_image_sha256"] == hashlib.sha256(png_bytes(first)).hexdigest()
    for mode in ("L", "P", "RGBA", "CMYK"):
        converted = picture(64, 64).convert(mode)
        await _generate(client, init_image=b64(converted, "JPEG" if mode == "CMYK" else "PNG"), steps=2)


def _truncated() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    whole = encode(Image.fromarray(noise))
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"init_image": "not base64 !"}, 422, "init_image"),
        ({"init_image": b64(b"plain text, not an image")}, 422, "init_image"),
        ({"init_image": b64(_truncated())}, 422, "init_image"),
        ({"init_image": b64(picture(64, 64), "BMP")}, 422, "init_image"),
        ({"init_image": b64(png_file(50_000, 50_000))}, 413, "init_image"),
        ({"init_image": b64(picture(64, 64)), "mask": b64(Image.new("L", (64, 64), 0))}, 422, "mask"),
        ({"init_image": b64(picture(64, 64)), "mask": "AAAA"}, 422, "mask"),
        ({"mask": b64(right_half_mask())}, 422, "mask"),
        ({"init_image": b64(picture(64, 64)), "strength": 0}, 422, "strength"),
        ({"init_image": b64(picture(64, 64)), "strength": 1.5}, 422, "strength"),
        ({"init_image": b64(picture(64, 64)), "strength": 0.1, "steps": 3}, 422, "strength"),
        ({"init_image": b64(picture(64, 64)), "inpaint_area": "some"}, 422, "inpaint_area"),
    ],
)
async def test_bad_input_gets_a_json_error_naming_the_field(client, body, status, field):
    resp = await client.post("/api/v1/generate", json={"prompt": "x", **body})
    assert resp.status == status, await resp.text()
    error = await resp.json()
    assert list(error["fields"]) == [field] and error["message"]
    assert (await client.get("/health")).status == 200  # and the server keeps serving


async def test_an_image_over_max_input_pixels_is_refused_before_decoding(make_client, settings):
    client = await make_client(settings.replace(max_input_pixels=64 * 64))
    resp = await client.post("/api/v1/generate", json={"prompt": "x", "init_image": b64(picture(65, 64))})
    assert resp.status == 413 and "MAX_INPUT_PIXELS" in (await resp.json())["fields"]["init_image"][0]


async def test_image_routes_have_their_own_body_limit(make_client, settings):
    client = await make_client(settings.replace(max_body_bytes=4096, max_image_body_bytes=200_000))
    big = b64(np.random.default_rng(1).integers(0, 255, 20_000, dtype=np.uint8).tobytes())  # ~27 KB
    resp = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "padding": big})
    assert resp.status == 413
    _, image = await _generate(client, init_image=b64(picture(96, 96)), steps=2, negative_prompt="")
    assert image
    resp = await client.post("/api/v1/generate", json={"prompt": "x", "init_image": big * 10})
    assert resp.status == 413 and (await resp.json())["error"] == "body_too_large"


async def test_inputs_are_kept_while_the_job_waits_and_survive_a_restart(make_client, settings):
    inputs = settings.output_dir / "inputs"
    client = await make_client(settings.replace(shutdown_grace=0.0), engine_factory=GatedEngine)
    resp = await client.post("/api/v1/jobs", json={"prompt": "x", "init_image": b64(picture(64, 64)), "steps": 2})
    job = await resp.json()
    assert len(list(inputs.glob("*.png"))) == 1
    await client.close()  # the running job is suspended: it stays queued, with its input
    assert len(list(inputs.glob("*.png"))) == 1

    client = await make_client(settings)
    queued = await client.app[keys.QUEUE].find(job["id"])
    await queued.wait()
    done = await (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert done["status"] == "succeeded" and done["meta"]["mode"] == "img2img"
    await client.app[keys.STORE].inputs.swept()  # the sweep after a job's end runs off the event loop
    assert list(inputs.glob("*.png")) == []  # deleted once the job ended


async def test_an_upload_survives_another_job_ending_before_it_is_queued(client, monkeypatch):
    """The race CI's stateful fuzzing found: a request's images are stored (or found already
    there), and before its job is queued another job ends and sweeps the inputs folder."""
    from sdxl_server.api import image_inputs

    inputs = client.app[keys.STORE].inputs
    decode = image_inputs.decode_inputs

    def decode_then_a_job_ends(*args, **kwargs):
        stored = decode(*args, **kwargs)
        inputs.sweep()  # what every job's end does
        return stored

    monkeypatch.setattr(image_inputs, "decode_inputs", decode_then_a_job_ends)
    body = {"init_image": b64(picture(64, 64)), "mask": b64(right_half_mask(64, 64)), "steps": 2, "strength": 1.0}
    data, _ = await _generate(client, **body)
    assert data["meta"]["mode"] == "inpaint"
    await inputs.swept()
    assert inputs.blobs.names("inputs") == []


async def test_a_waiting_jobs_input_survives_a_job_ending_during_the_shutdown_grace(make_client, settings):
    """A shutdown suspends the waiting jobs (they run at the next start); the running job that
    then finishes within the grace period must not sweep their inputs away."""
    import asyncio

    client = await make_client(settings.replace(shutdown_grace=600.0), engine_factory=GatedEngine)
    engine, queue = client.app[keys.ENGINE], client.app[keys.QUEUE]
    await client.post("/api/v1/jobs", json={"prompt": "running", "steps": 1})
    await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)
    waiting = await (await client.post("/api/v1/jobs", json={"prompt": "x", "init_image": b64(picture(64, 64)),
                                                              "steps": 2})).json()
    closing = asyncio.create_task(client.close())
    while queue.accepting:
        await asyncio.sleep(0)
    engine.gate.set()  # the running job finishes within the grace period
    await closing

    client = await make_client(settings)
    queued = await client.app[keys.QUEUE].find(waiting["id"])
    await queued.wait()
    done = await (await client.get(f"/api/v1/jobs/{waiting['id']}")).json()
    assert done["status"] == "succeeded" and done["meta"]["mode"] == "img2img"


async def test_save_inputs_keeps_them(make_client, settings):
    client = await make_client(settings.replace(save_inputs=True))
    data, _ = await _generate(client, init_image=b64(picture(64, 64)), mask=b64(right_half_mask(64, 64)), steps=2)
    kept = {path.stem for path in (settings.output_dir / "inputs").glob("*.png")}
    assert kept == {data["meta"]["init_image_sha256"], data["meta"]["mask_sha256"]}


async def test_a_job_adopted_from_its_metadata_keeps_its_mode(client):
    from sdxl_server.jobs.housekeeping import adopted_record
    from sdxl_server.params import GenerationParams

    data, _ = await _generate(client, init_image=b64(picture(64, 64)), mask=b64(right_half_mask(64, 64)), steps=2)
    record = adopted_record(data["id"], [data["meta"]], client.app[keys.STORE], 0.0)
    params = GenerationParams.from_dict(record["params"])
    assert params.mode == "inpaint" and params.inputs["init"] == data["meta"]["init_image_sha256"]
