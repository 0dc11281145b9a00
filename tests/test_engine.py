"""Which model is loaded and from where, every loading path that runs offline, and load failures."""

from __future__ import annotations

import io
import shutil

import pytest
from doubles import OverflowingVaeEngine
from files import seed_layout
from PIL import Image

from sdxl_server.api import keys
from sdxl_server.config import DEFAULT_HUB_MODEL
from sdxl_server.pipeline.sources import resolve_model_source


def test_resolution_order_model_id_then_model_dir_then_hub(settings, tiny_model_dir, tmp_path):
    assert resolve_model_source(settings.replace(model_id=None)).kind == "hub"
    source = resolve_model_source(settings.replace(model_id=None))
    assert (source.location, source.origin) == (DEFAULT_HUB_MODEL, "default")

    source = resolve_model_source(settings.replace(model_id=None, model_dir=tiny_model_dir))
    assert (source.kind, source.location, source.origin) == ("folder", str(tiny_model_dir), "MODEL_DIR")

    source = resolve_model_source(settings.replace(model_id="tiny", model_dir=tiny_model_dir))
    assert (source.kind, source.origin) == ("tiny", "MODEL_ID")

    source = resolve_model_source(settings.replace(model_id="someone/sdxl-finetune"))
    assert (source.kind, source.location) == ("hub", "someone/sdxl-finetune")

    source = resolve_model_source(settings.replace(model_id=str(tiny_model_dir)))
    assert (source.kind, source.origin) == ("folder", "MODEL_ID")

    source = resolve_model_source(settings.replace(model_id="/models/sd_xl_base_1.0.safetensors"))
    assert (source.kind, source.location) == ("single_file", "/models/sd_xl_base_1.0.safetensors")


def test_seed_layout_folder_of_loose_safetensors(settings, tmp_path):
    folder = seed_layout(tmp_path / "model")
    source = resolve_model_source(settings.replace(model_id=None, model_dir=folder))
    assert source.kind == "single_file"
    assert source.location == str(folder / "sd_xl_base_1.0.safetensors")
    assert source.vae == str(folder / "sdxl.vae.safetensors")
    assert source.origin == "MODEL_DIR"
    # An explicit VAE_ID wins over the one found in the folder.
    assert resolve_model_source(settings.replace(model_id=None, model_dir=folder, vae_id="x/vae")).vae == "x/vae"


async def _png(client, body):
    resp = await client.post("/api/v1/generate", json=body)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    image = await client.get(data["image_url"])
    return data, Image.open(io.BytesIO(await image.read()))


async def test_local_folder_loads_the_same_model_as_tiny(make_client, settings, tiny_model_dir, tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, folder)
    body = {"prompt": "same weights", "seed": 11}
    tiny_client = await make_client(settings)
    _, tiny_image = await _png(tiny_client, body)
    await tiny_client.close()

    client = await make_client(settings.replace(model_id=None, model_dir=folder))
    health = await (await client.get("/health")).json()
    assert health["model"]["source"] == "folder" and health["model"]["origin"] == "MODEL_DIR"
    data, image = await _png(client, body)
    assert data["meta"]["model_id"] == str(folder)
    assert image.tobytes() == tiny_image.tobytes()


async def test_replacement_vae_from_a_folder(make_client, settings, tiny_model_dir):
    client = await make_client(settings.replace(vae_id=str(tiny_model_dir / "vae")))
    health = await (await client.get("/health")).json()
    assert health["model"]["vae"] == str(tiny_model_dir / "vae") and health["model"]["loaded"]
    await _png(client, {"prompt": "own vae"})


@pytest.mark.parametrize(
    ("model_id", "reason"),
    [
        ("/nonexistent/sdxl-model", "no such folder: /nonexistent/sdxl-model"),
        ("nobody/no-such-sdxl-model", "nobody/no-such-sdxl-model"),
    ],
)
async def test_failed_load_keeps_serving_and_says_why(make_client, settings, model_id, reason):
    client = await make_client(settings.replace(model_id=model_id))
    resp = await client.get("/health")
    assert resp.status == 503
    health = await resp.json()
    assert health["status"] == "error" and health["model"]["state"] == "failed"
    error = health["model"]["error"]
    assert reason in error and "MODEL_ID=tiny" in error and "MODEL_DIR" in error

    resp = await client.post("/api/v1/generate", json={"prompt": "refused"})
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == "model_unavailable" and body["message"] == error


async def test_lazy_load_on_first_request(make_client, settings):
    client = await make_client(settings.replace(preload=False))
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok" and health["model"]["state"] == "not_loaded"
    await _png(client, {"prompt": "first"})
    health = await (await client.get("/health")).json()
    assert health["model"]["state"] == "ready"


async def test_float16_vae_overflow_is_redone_in_float32(make_client, settings):
    client = await make_client(settings.replace(dtype="float16"), engine_factory=OverflowingVaeEngine)
    data, image = await _png(client, {"prompt": "overflow", "seed": 5})
    assert data["meta"]["dtype"] == "float16"
    assert data["meta"]["vae_upcast"] is True
    assert image.getextrema() != ((0, 0), (0, 0), (0, 0))  # not the black image fp16 overflow gives


async def test_vae_tiling_takes_effect_at_1024(make_client, settings):
    client = await make_client(settings.replace(vae_tiling="on", max_width=1024, max_height=1024))
    health = await (await client.get("/health")).json()
    assert health["options"]["vae_tiling"] is True and health["options"]["vae_tile_px"] == 512
    decoder = client.app[keys.ENGINE].pipe.vae.decoder
    shapes = []
    forward = decoder.forward

    def spy(z, *args, **kwargs):
        shapes.append(tuple(z.shape[-2:]))
        return forward(z, *args, **kwargs)

    decoder.forward = spy
    _, image = await _png(client, {"prompt": "tiles", "width": 1024, "height": 1024, "steps": 1})
    assert image.size == (1024, 1024)
    # 512 px tiles are 64 latents; with 25% overlap a 128-latent image takes 3 x 3 of them.
    assert len(shapes) == 9 and max(shapes) == (64, 64)


def _max_pixel_difference(a: Image.Image, b: Image.Image) -> int:
    return max(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes()))


@pytest.fixture(scope="module")
def single_files(tiny_model_dir, tmp_path_factory):
    """The tiny model as people download SDXL: one original-layout checkpoint, and a VAE file."""
    from diffusers import StableDiffusionXLPipeline
    from sdxl_checkpoint import save_original_checkpoint, save_original_vae

    folder = tmp_path_factory.mktemp("checkpoints")
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    checkpoint = save_original_checkpoint(pipe, folder / "sd_xl_base_1.0.safetensors")
    vae = save_original_vae(pipe.vae, folder / "sdxl.vae.safetensors")
    return checkpoint, vae


async def test_single_file_checkpoint_loads_offline_with_a_local_config(make_client, settings, tiny_model_dir, single_files):
    checkpoint, _ = single_files
    body = {"prompt": "one file", "seed": 4}
    reference = await make_client(settings)
    _, expected = await _png(reference, body)
    await reference.close()

    client = await make_client(settings.replace(model_id=str(checkpoint), model_config=str(tiny_model_dir)))
    health = await (await client.get("/health")).json()
    assert health["model"]["source"] == "single_file" and health["model"]["loaded"], health["model"]["error"]
    data, image = await _png(client, body)
    assert data["meta"]["model_id"] == str(checkpoint)
    assert _max_pixel_difference(image, expected) <= 1  # same weights; float rounding may move a level


async def test_seed_layout_with_its_vae_file(make_client, settings, tiny_model_dir, single_files, tmp_path):
    checkpoint, vae = single_files
    folder = tmp_path / "model"
    folder.mkdir()
    for file in (checkpoint, vae):
        (folder / file.name).symlink_to(file)
    (folder / "sd_xl_refiner_1.0.safetensors").write_bytes(b"not loaded")
    client = await make_client(settings.replace(model_id=None, model_dir=folder, model_config=str(tiny_model_dir)))
    health = await (await client.get("/health")).json()
    assert health["model"]["loaded"], health["model"]["error"]
    assert health["model"]["origin"] == "MODEL_DIR" and health["model"]["vae"] == str(folder / "sdxl.vae.safetensors")
    await _png(client, {"prompt": "seed layout"})


async def test_replacement_vae_from_a_single_file(make_client, settings, single_files):
    _, vae = single_files
    client = await make_client(settings.replace(vae_id=str(vae)))
    health = await (await client.get("/health")).json()
    assert health["model"]["loaded"], health["model"]["error"]
    await _png(client, {"prompt": "vae file"})


async def test_single_file_without_a_local_config_fails_offline_with_the_fix(make_client, settings, single_files):
    checkpoint, _ = single_files
    client = await make_client(settings.replace(model_id=str(checkpoint)))
    resp = await client.get("/health")
    assert resp.status == 503
    error = (await resp.json())["model"]["error"]
    assert "single file model" in error and "Fix:" in error and "set MODEL_CONFIG to a local" in error
