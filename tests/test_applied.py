"""Every field of A1111's and OpenAI's image requests is applied, warned about, refused or has no
effect, as sdxl_server/api/applied.py says: walked field by field against their sources.

The field lists are read from:
- AUTOMATIC1111/stable-diffusion-webui modules/api/models.py (008a8e7576387bc172f9ecd0384274dd19f9036b):
  the request models are the ``__init__`` fields of the processing classes, less ``API_NOT_ALLOWED``,
  plus the ``additional_fields``; modules/processing.py (0027ce1f6e58c5f4279173e468a60aef420babfe):
  ``StableDiffusionProcessing`` and ``...Img2Img`` fields, with 1.9/1.10's ``scheduler``,
  ``firstpass_image``, ``hr_scheduler`` and ``force_task_id``.
- openai/openai-python src/openai/types/image_generate_params.py (04448952820aa3029e61907c1785a7293c3ddbc2,
  with the later ``stream`` and ``partial_images``), image_edit_params.py
  (01a7709e0dec385d3b4dbc1056f3787f30e2ccb1), image_create_variation_params.py (04448952).
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from images import b64, encode, picture, right_half_mask
from PIL import Image

from sdxl_server.api.applied import APPLIED, NO_EFFECT, REFUSED, TABLES, WARNED

A1111_BASE = """prompt negative_prompt styles seed subseed subseed_strength seed_resize_from_h seed_resize_from_w
    sampler_name scheduler batch_size n_iter steps cfg_scale width height restore_faces tiling do_not_save_samples
    do_not_save_grid eta denoising_strength s_min_uncond s_churn s_tmax s_tmin s_noise override_settings
    override_settings_restore_afterwards refiner_checkpoint refiner_switch_at disable_extra_networks comments
    firstpass_image""".split()
A1111_ADDED = "sampler_index script_name script_args send_images save_images alwayson_scripts force_task_id infotext".split()
A1111_FIELDS = {
    "/sdapi/v1/txt2img": {*A1111_BASE, *A1111_ADDED, *"""enable_hr firstphase_width firstphase_height hr_scale hr_upscaler
        hr_second_pass_steps hr_resize_x hr_resize_y hr_checkpoint_name hr_sampler_name hr_scheduler hr_prompt
        hr_negative_prompt""".split()},
    "/sdapi/v1/img2img": {*A1111_BASE, *A1111_ADDED, *"""init_images resize_mode image_cfg_scale mask mask_blur_x
        mask_blur_y mask_blur mask_round inpainting_fill inpaint_full_res inpaint_full_res_padding
        inpainting_mask_invert initial_noise_multiplier latent_mask include_init_images""".split()},
}
OPENAI_FIELDS = {
    "/v1/images/generations": set("""prompt background model moderation n output_compression output_format quality
        response_format size style user stream partial_images""".split()),
    "/v1/images/edits": set("""image images prompt background input_fidelity mask model n output_compression output_format
        partial_images quality response_format size user stream""".split()),
    "/v1/images/variations": set("image model n response_format size user".split()),
}
# Being added with clip skip and styles, and OpenAI streaming: in the table as applied already.
PENDING = {"styles", "stream", "partial_images"}


def test_every_field_of_every_route_is_in_its_table():
    for route, names in {**A1111_FIELDS, **OPENAI_FIELDS}.items():
        assert set(TABLES[route]) == names, route


@pytest.fixture
def settings(settings):
    return settings.replace(refiner_id="tiny")


IMAGE = b64(picture(64, 64))
MASK = b64(right_half_mask(64, 64))
BASE = {"prompt": "a fox", "seed": 5, "steps": 2, "width": 64, "height": 64}
BASES = {"/sdapi/v1/txt2img": BASE, "/sdapi/v1/img2img": {**BASE, "init_images": [IMAGE]}}
# field -> (its value, what the baseline needs beside it for the field to matter)
A1111_APPLIED = {
    "prompt": ("a cat", {}), "negative_prompt": ("blurry", {}), "seed": (6, {}), "sampler_name": ("DDIM", {}),
    "sampler_index": ("DDIM", {}), "scheduler": ("Exponential", {"sampler_name": "DPM++ 2M"}), "batch_size": (2, {}),
    "n_iter": (2, {}), "steps": (3, {}), "cfg_scale": (5, {}), "width": (128, {}), "height": (128, {}),
    "refiner_checkpoint": ("refiner", {}), "refiner_switch_at": (0.5, {"refiner_checkpoint": "r", "steps": 4}),
    "send_images": (False, {}), "override_settings": ({"sd_model_checkpoint": "other"}, {}),
    "init_images": ([b64(picture(64, 64).rotate(90))], {}), "resize_mode": (1, {"height": 96}),
    "denoising_strength": (0.5, {}), "mask": (MASK, {}), "mask_blur": (8, {"mask": MASK}),
    "inpainting_fill": (0, {"mask": MASK}), "inpaint_full_res": (True, {"mask": MASK}),
    "inpaint_full_res_padding": (8, {"mask": MASK, "inpaint_full_res": True}),
    "inpainting_mask_invert": (1, {"mask": MASK}), "include_init_images": (True, {}),
    "enable_hr": (True, {"hr_scale": 1.5}), "hr_scale": (1.5, {"enable_hr": True}),
    "hr_upscaler": ("Lanczos", {"enable_hr": True}), "hr_second_pass_steps": (3, {"enable_hr": True}),
    "hr_resize_x": (128, {"enable_hr": True, "hr_scale": 1.5}), "hr_resize_y": (128, {"enable_hr": True, "hr_scale": 1.5}),
    "hr_sampler_name": ("DDIM", {"enable_hr": True}), "hr_scheduler": ("Exponential", {"enable_hr": True, "sampler_name": "DPM++ 2M"}),
    "hr_prompt": ("a dog", {"enable_hr": True}), "hr_negative_prompt": ("blurry", {"enable_hr": True}),
}
# denoising_strength acts on image to image, and on text to image with enable_hr
A1111_APPLIED_ON = {"/sdapi/v1/txt2img": {"denoising_strength": (0.5, {"enable_hr": True})}}
# field -> (a value that asks for what is not applied, A1111's default: no warning)
A1111_WARNED = {
    "subseed_strength": (0.5, 0), "seed_resize_from_h": (128, -1), "seed_resize_from_w": (128, -1),
    "restore_faces": (True, False), "tiling": (True, False), "eta": (0.5, 1), "s_min_uncond": (0.5, 0),
    "s_churn": (1, 0), "s_tmax": (5, 0), "s_tmin": (0.2, 0), "s_noise": (0.9, 1), "disable_extra_networks": (True, False),
    "firstpass_image": (IMAGE, None), "script_name": ("x/y/z plot", "None"), "infotext": ("a fox\nSteps: 20", None),
    "alwayson_scripts": ({"ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt"}]}},
                         {"ControlNet": {"args": [{"enabled": False}]}, "ADetailer": {"args": []}}),
    "hr_checkpoint_name": ("other", "Use same checkpoint"), "mask_blur_x": (8, 4), "mask_blur_y": (8, 4), "mask_round": (False, True),
    "initial_noise_multiplier": (0.5, 1), "latent_mask": (MASK, None),
}
A1111_NO_EFFECT = {
    "subseed": 99, "do_not_save_samples": True, "do_not_save_grid": True, "save_images": True, "comments": {"a": 1},
    "override_settings_restore_afterwards": False, "force_task_id": "task-1", "script_args": [1, 2],
    "firstphase_width": 128, "firstphase_height": 128, "image_cfg_scale": 1.5,
}


async def _answer(client, route: str, body: dict) -> tuple:
    """What a client sees of an A1111 answer: the status, images, and info (less its clock)."""
    resp = await client.post(route, json=body)
    answer = await resp.json()
    if resp.status != 200:
        return resp.status, answer.get("fields"), (), {}
    info = json.loads(answer["info"])
    info.pop("job_timestamp")
    echoed = answer["parameters"].get("init_images") is not None
    return resp.status, echoed, tuple(answer["images"]), info


@pytest.mark.parametrize("route", list(A1111_FIELDS))
async def test_a1111_applied_fields_change_the_answer(client, route):
    table = TABLES[route]
    applied = {name for name, rule in table.items() if rule.treatment == APPLIED} - PENDING
    assert applied <= set(A1111_APPLIED)  # each has a sample
    base = BASES[route]
    assert await _answer(client, route, base) == await _answer(client, route, base)  # the same request, the same answer
    for name in sorted(applied):
        value, needs = {**A1111_APPLIED, **A1111_APPLIED_ON.get(route, {})}[name]
        before = await _answer(client, route, {**base, **needs})
        after = await _answer(client, route, {**base, **needs, name: value})
        assert after != before, name
        assert not after[3].get("warnings"), name


@pytest.mark.parametrize("route", list(A1111_FIELDS))
async def test_a1111_unapplied_fields_are_warned_and_defaults_are_not(client, route, settings, caplog):
    table = TABLES[route]
    warned = {name for name, rule in table.items() if rule.treatment == WARNED}
    assert warned <= set(A1111_WARNED)
    base = BASES[route]
    _, _, _, quiet = await _answer(client, route, {**base, **{name: A1111_WARNED[name][1] for name in warned},
                                                   "override_settings": {"samples_format": "jpg"}})
    assert quiet["warnings"] == []
    with caplog.at_level("WARNING", logger="sdxl_server.api.applied"):
        status, _, images, info = await _answer(client, route, {
            **base, **{name: A1111_WARNED[name][0] for name in warned},
            "override_settings": {"sd_model_checkpoint": "tiny", "sd_vae": "other.safetensors"}})
    assert status == 200 and len(images) == 1
    said = {line.split(":")[0].split(".")[0] for line in info["warnings"]}
    assert said == warned | {"override_settings"}
    assert "alwayson_scripts.ADetailer: not applied" in "\n".join(info["warnings"])
    assert "override_settings.sd_vae" in "\n".join(info["warnings"])
    assert "restore_faces: true not applied" in caplog.text
    metas = [json.loads(path.read_text()) for path in (settings.output_dir / "metadata").glob("*.json")]
    assert sorted(str(meta.get("warnings")) for meta in metas) == sorted(["None", str(info["warnings"])])


@pytest.mark.parametrize("route", list(A1111_FIELDS))
async def test_a1111_fields_with_no_effect_leave_the_image_as_it_was(client, route):
    table = TABLES[route]
    quiet = {name for name, rule in table.items() if rule.treatment == NO_EFFECT}
    assert quiet <= set(A1111_NO_EFFECT)
    base = BASES[route]
    before = await _answer(client, route, base)
    after = await _answer(client, route, {**base, **{name: A1111_NO_EFFECT[name] for name in quiet}})
    assert after[2] == before[2] and after[3] == before[3]


def _form(route: str, fields: dict):
    """A multipart body for the edit routes (an image always), or the JSON fields for generations."""
    if route.endswith("generations"):
        return fields
    form = aiohttp.FormData()
    for name, value in fields.items():
        if isinstance(value, bytes):
            form.add_field(name, value, filename=f"{name}.png", content_type="image/png")
        else:
            form.add_field(name, str(value))
    return form


OPENAI_BASE = {"/v1/images/generations": {"prompt": "a fox", "size": "64x64"},
               "/v1/images/edits": {"prompt": "a fox", "image": encode(picture(64, 64)), "size": "64x64"},
               "/v1/images/variations": {"image": encode(picture(64, 64)), "size": "64x64"}}
_TRANSPARENT = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
OPENAI_APPLIED = {"prompt": "a cat", "model": "not-a-model", "n": 2, "size": "128x64", "response_format": "url",
                  "output_format": "jpeg", "output_compression": 50, "image": encode(picture(64, 64).rotate(90)),
                  "mask": encode(_TRANSPARENT)}
OPENAI_NEEDS = {"output_compression": {"output_format": "jpeg"}}
OPENAI_NO_EFFECT = {"quality": "hd", "moderation": "low", "user": "u-1", "style": "natural", "input_fidelity": "high"}
OPENAI_REFUSED = {"background": ("transparent", "opaque"), "images": ('[{"image_url": "https://x/y.png"}]', None)}


async def _openai_answer(client, route: str, fields: dict) -> tuple:
    common = {"response_format": "b64_json", "seed": 5, "steps": 2}
    if route.endswith("generations"):
        resp = await client.post(route, json={**common, **fields})
    else:
        resp = await client.post(route, data=_form(route, {**common, **fields}))
    body = await resp.json()
    if resp.status != 200:
        return resp.status, body["error"]["param"], ()
    return resp.status, None, tuple(item.get("b64_json") or "url" for item in body["data"])


@pytest.mark.parametrize("route", list(OPENAI_FIELDS))
async def test_openai_fields_are_applied_refused_or_without_effect(client, route):
    table, base = TABLES[route], OPENAI_BASE[route]
    before = await _openai_answer(client, route, base)
    assert before[0] == 200 and before == await _openai_answer(client, route, base)
    for name, rule in sorted(table.items()):
        if rule.treatment == APPLIED and name not in PENDING:
            needs = OPENAI_NEEDS.get(name, {})
            assert await _openai_answer(client, route, {**base, **needs, name: OPENAI_APPLIED[name]}) != \
                await _openai_answer(client, route, {**base, **needs}), name
        elif rule.treatment == NO_EFFECT:
            assert await _openai_answer(client, route, {**base, name: OPENAI_NO_EFFECT[name]}) == before, name
        elif rule.treatment == REFUSED:
            asks, fine = OPENAI_REFUSED[name]
            assert await _openai_answer(client, route, {**base, name: asks}) == (400, name, ()), name
            if fine is not None:
                assert await _openai_answer(client, route, {**base, name: fine}) == before, name
        else:
            assert name in PENDING, name
