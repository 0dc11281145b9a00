"""MEMORY_PROFILE: the memory settings chosen from the GPU's size (a pure decision, tested with
any size), explicit settings winning over it, the text-encoder offload giving the same images, and
float8 weight storage loading, generating and being reported."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from sdxl_server.api import keys

from sdxl_server.pipeline.memory import GIB, plan_memory, refiner_placement

CARDS = {  # nominal size -> what such a card reports (a little under its name)
    4: int(3.8 * GIB), 6: int(5.8 * GIB), 8: 8188 * 1024**2, 12: int(11.7 * GIB), 24: int(23.6 * GIB), 80: int(79.2 * GIB),
}


@pytest.mark.parametrize(
    ("card", "profile", "tiling", "encoders_off", "offload", "fp8"),
    [
        (4, "low", True, False, "group", "all"),
        (6, "6gb", True, True, "none", "all"),
        (8, "8gb", True, False, "none", "unet"),
        (12, "8gb", True, False, "none", "unet"),
        (24, "high", False, False, "none", "off"),
        (80, "high", False, False, "none", "off"),
    ],
)
def test_auto_picks_the_fastest_profile_that_fits(settings, card, profile, tiling, encoders_off, offload, fp8):
    plan = plan_memory(settings, CARDS[card], "float16")
    assert (plan.profile, plan.vae_tiling, plan.text_encoder_offload, plan.cpu_offload, plan.fp8) == (
        profile, tiling, encoders_off, offload, fp8,
    )
    assert f"{CARDS[card] / GIB:.1f} GiB" in plan.reason and plan.overrides == []
    assert len(plan.explained()) == (tiling + encoders_off + (offload != "none") + (fp8 != "off") or 1)


def test_an_8_gb_card_counted_in_decimal_gigabytes_is_still_an_8_gb_card(settings):
    assert plan_memory(settings, 8 * 10**9, "float16").profile == "8gb"


def test_float32_weights_need_twice_the_memory(settings):
    assert plan_memory(settings, CARDS[24], "float32").profile == "8gb"
    assert plan_memory(settings, CARDS[12], "float32").profile == "6gb"
    assert plan_memory(settings, CARDS[8], "float32").profile == "low"


def test_explicit_settings_override_the_profile(settings):
    plan = plan_memory(settings.replace(vae_tiling="off", text_encoder_offload="on", fp8_weights="off"), CARDS[8], "float16")
    assert (plan.profile, plan.vae_tiling, plan.text_encoder_offload, plan.fp8) == ("8gb", False, True, "off")
    assert plan.overrides == ["VAE_TILING=off", "TEXT_ENCODER_OFFLOAD=on", "FP8_WEIGHTS=off"]

    plan = plan_memory(settings.replace(cpu_offload="model"), CARDS[24], "float16")
    assert (plan.profile, plan.cpu_offload, plan.vae_tiling) == ("high", "model", False)

    plan = plan_memory(settings.replace(memory_profile="low"), CARDS[80], "float16")
    assert (plan.profile, plan.cpu_offload, plan.reason) == ("low", "group", "MEMORY_PROFILE=low")
    assert plan_memory(settings.replace(cpu_offload="model"), CARDS[4], "float16").cpu_offload == "model"


def test_without_a_gpu_everything_stays_in_memory(settings):
    plan = plan_memory(settings, None, "float32")
    assert (plan.profile, plan.vae_tiling, plan.text_encoder_offload, plan.cpu_offload) == ("cpu", False, False, "none")
    assert plan_memory(settings.replace(memory_profile="low"), None, "float32").cpu_offload == "none"


async def _image(client, body) -> bytes:
    resp = await client.post("/api/v1/generate", json=body)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    images = [data] + data.get("images", [])[1:]
    blobs = [await (await client.get(image["image_url"])).read() for image in images]
    return b"".join(Image.open(io.BytesIO(blob)).tobytes() for blob in blobs)


async def test_text_encoders_on_the_cpu_encode_prompts_to_the_same_images(make_client, settings):
    body = {"prompt": "a lighthouse", "negative_prompt": "fog", "seed": 21, "num_images": 2}
    plain = await make_client(settings)
    health = await (await plain.get("/health")).json()
    assert health["options"]["memory_profile"]["profile"] == "cpu"
    assert health["options"]["memory_profile"]["explained"] == ["everything resident in DTYPE, no tiling"]
    expected = await _image(plain, body)
    await plain.close()

    client = await make_client(settings.replace(text_encoder_offload="on", vae_tiling="on"))
    health = await (await client.get("/health")).json()
    assert health["options"]["vae_tiling"] is True and health["options"]["text_encoder_offload"] is True
    assert await _image(client, body) == expected  # tiling at 64 px is one tile; embeddings are the same


async def test_the_6gb_profile_stores_weights_in_fp8_generates_and_says_so(make_client, settings):
    """On the CPU too: float8 storage loads, generates (close to the float32 image) and is reported."""
    import numpy as np

    body = {"prompt": "a lighthouse", "negative_prompt": "fog", "seed": 21}
    plain = await make_client(settings)
    expected = np.frombuffer(await _image(plain, body), dtype=np.uint8).astype(np.int16)
    await plain.close()

    client = await make_client(settings.replace(memory_profile="6gb"))
    health = await (await client.get("/health")).json()
    chosen = health["options"]["memory_profile"]
    assert (chosen["profile"], chosen["reason"], chosen["fp8_weights"]) == ("6gb", "MEMORY_PROFILE=6gb", "all")
    assert any("float8" in line for line in chosen["explained"])
    assert health["options"]["fp8_weights"] == ["unet", "text_encoder", "text_encoder_2"]
    engine = client.app[keys.ENGINE]
    assert {p.dtype for n, p in engine.pipe.unet.named_parameters() if n.endswith("attn1.to_q.weight")} == {torch.float8_e4m3fn}
    got = np.frombuffer(await _image(client, body), dtype=np.uint8).astype(np.int16)
    difference = np.abs(got - expected).mean()
    assert 0 < difference < 8, difference  # float8 changes the image a little (mean per channel, of 255)


@pytest.mark.parametrize(
    ("card", "dtype", "offload", "placement"),
    [
        (8, "float16", "none", "swapped"),  # the seed's RTX 4060: one UNet on the GPU at a time
        (12, "float16", "none", "swapped"),
        (24, "float16", "none", "resident"),
        (24, "float32", "none", "swapped"),  # float32 weights take twice the room
        (80, "float16", "none", "resident"),
        (4, "float16", "model", "offloaded"),
    ],
)
def test_the_refiner_unet_stays_beside_the_base_only_where_both_fit(card, dtype, offload, placement):
    where, why = refiner_placement(CARDS[card], dtype, offload)
    assert where == placement and why
    assert refiner_placement(None, "float32", "none")[0] == "cpu"


async def test_loras_apply_on_top_of_fp8_weights(make_client, settings, tiny_model_dir, tmp_path):
    """PEFT makes a LoRA's layers in its base layer's dtype; beside float8 weights they are lifted to DTYPE."""
    from lora_builder import lora_weights, save_diffusers_layout

    loras = tmp_path / "loras"
    loras.mkdir()
    save_diffusers_layout(lora_weights(tiny_model_dir, seed=1), loras / "ink.safetensors")
    client = await make_client(settings.replace(fp8_weights="unet", lora_dir=loras))
    body = {"prompt": "a lighthouse", "seed": 21}
    plain = await _image(client, body)
    inked = await _image(client, {**body, "loras": [{"name": "ink", "weight": 1.0}]})
    assert inked != plain
    unet = client.app[keys.ENGINE].pipe.unet
    assert {p.dtype for n, p in unet.named_parameters() if ".lora_" in n} == {torch.float32}
