"""Single-file ControlNets in CONTROLNET_DIR, as A1111 users keep them: the tiny ControlNet (and the
tiny ControlNet-Union) saved as one ``.safetensors`` file in diffusers' tensor names and in the
original ``control_model.`` layout, listed with their type, loaded without the model hub, and
making the image the same weights make from a diffusers folder; files that are no SDXL ControlNet
listed with the reason and refused."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from images import b64, edges
from PIL import Image
from safetensors.torch import save_file

from sdxl_server.pipeline.tiny import build_tiny_controlnet, build_tiny_union_controlnet

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _original_name(key: str, layers: int) -> str:
    """A diffusers ControlNet tensor's name in the original (ControlNet repository's) layout."""
    parts = key.split(".")
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": "input_hint_block.14", "controlnet_mid_block": "middle_block_out.0"}
    head = ".".join(parts[:-1])
    if head in fixed:
        return f"{fixed[head]}.{parts[-1]}"
    if parts[0] == "controlnet_cond_embedding":
        return f"input_hint_block.{2 * (int(parts[2]) + 1)}.{parts[-1]}"
    if parts[0] == "controlnet_down_blocks":
        return f"zero_convs.{parts[1]}.0.{parts[-1]}"
    if parts[0] == "mid_block":
        block = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{parts[1]}.{parts[2]}"]
        rest = parts[3:]
        return f"middle_block.{block}." + ".".join([_RESNET.get(rest[0], rest[0]), *rest[1:]] if parts[1] == "resnets" else rest)
    level, kind, number, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
    first = 1 + level * (layers + 1)
    if kind == "downsamplers":
        return f"input_blocks.{first + layers}.0.op.{rest[-1]}"
    if kind == "resnets":
        return f"input_blocks.{first + number}.0." + ".".join([_RESNET[rest[0]], *rest[1:]])
    return f"input_blocks.{first + number}.1." + ".".join(rest)


def _tensors(model) -> dict:
    return {key: value.contiguous() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory):
    """CONTROLNET_DIR: the tiny ControlNet as a folder and as single files in both layouts, the tiny
    Union as a folder and a single file, an SD 1.x-shaped single file and a truncated one."""
    root = tmp_path_factory.mktemp("controlnet-files")
    plain, union = build_tiny_controlnet(), build_tiny_union_controlnet()
    plain.save_pretrained(root / "tiny-canny")
    union.save_pretrained(root / "tiny-union")
    tensors = _tensors(plain)
    save_file(tensors, root / "diffusers_xl_canny_tiny.safetensors")
    layers = plain.config.layers_per_block
    save_file({f"control_model.{_original_name(key, layers)}": value for key, value in tensors.items()},
              root / "control_tiny_canny_original.safetensors")
    save_file(_tensors(union), root / "tiny-union-promax.safetensors", metadata={"num_trans_head": "2"})
    save_file({key: value for key, value in tensors.items() if not key.startswith("add_embedding.")},
              root / "sd15_depth_tiny.safetensors")
    save_file({key: value for key, value in tensors.items() if not key.startswith("controlnet_mid_block.")},
              root / "broken_xl_canny.safetensors")
    return root


@pytest.fixture
async def client(make_client, settings, controlnet_dir):
    return await make_client(dataclasses.replace(settings, controlnet_dir=controlnet_dir))


async def _generate(client, *units) -> np.ndarray:
    body = {"prompt": "a house", "seed": 7, "steps": 3, "width": 64, "height": 64,
            "controlnet": [{"image": b64(edges()), **unit} for unit in units]}
    response = await client.post("/api/v1/generate", json=body)
    assert response.status == 200, await response.text()
    png = await (await client.get((await response.json())["image_url"])).read()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


async def test_single_files_are_listed_with_their_type(client):
    listed = {entry["name"]: entry for entry in (await (await client.get("/api/v1/controlnets")).json())["controlnets"]}
    for name, kind in (("diffusers_xl_canny_tiny", "canny"), ("control_tiny_canny_original", "canny"),
                       ("tiny-union-promax", "union")):
        assert listed[name]["usable"] and listed[name]["layout"] == "single_file" and listed[name]["type"] == kind
    assert listed["tiny-union-promax"]["control_types"][:4] == ["openpose", "depth", "softedge", "canny"]
    assert "not an SDXL ControlNet" in listed["sd15_depth_tiny"]["problem"]
    assert listed["broken_xl_canny"]["usable"]  # its header looks right; its job finds it is not whole


async def test_a_single_file_makes_the_image_its_folder_makes(client):
    plain = await _generate(client)
    folder = await _generate(client, {"model": "tiny-canny"})
    assert np.abs(folder - plain).mean() > 2
    for name in ("diffusers_xl_canny_tiny", "control_tiny_canny_original"):
        assert np.array_equal(await _generate(client, {"model": name}), folder), name


async def test_a_union_single_file_makes_the_image_its_folder_makes(client):
    plain = await _generate(client)
    folder = await _generate(client, {"model": "tiny-union", "type": "canny"})
    single = await _generate(client, {"model": "tiny-union-promax", "type": "canny"})
    assert np.abs(folder - plain).mean() > 1 and np.array_equal(single, folder)


@pytest.mark.parametrize(("name", "words"), [("sd15_depth_tiny", "not an SDXL ControlNet"),
                                             ("broken_xl_canny", "cannot be loaded")])
async def test_a_file_that_is_no_sdxl_controlnet_is_refused(client, name, words):
    response = await client.post("/api/v1/generate", json={
        "prompt": "x", "steps": 2, "width": 64, "height": 64,
        "controlnet": [{"model": name, "image": b64(edges())}]})
    assert response.status == 422
    body = await response.text()
    assert "controlnet[0].model" in body and words in body


@pytest.mark.parametrize("depths", [(0, 2, 10), (0, 0, 1), (0, 0, 0)])  # the full, mid and small SDXL canny ControlNets
def test_full_size_sdxl_controlnets_config_is_read_from_their_tensors(depths):
    """Full-size shapes (no weights: on the meta device): the config worked out from an SDXL
    ControlNet's tensors and the SDXL UNet's config makes a model with exactly its tensors."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from sdxl_server.pipeline.controlnet_single import config_of

    sdxl = {"block_out_channels": (320, 640, 1280), "layers_per_block": 2, "cross_attention_dim": 2048,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "attention_head_dim": (5, 10, 20), "use_linear_projection": True, "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sdxl, transformer_layers_per_block=(1, 2, 10),
                                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
        controlnet = ControlNetModel(**sdxl, transformer_layers_per_block=depths)
        shapes = {key: tuple(value.shape) for key, value in controlnet.state_dict().items()}
        made = ControlNetModel.from_config(config_of(controlnet.state_dict(), dict(unet.config), {}))
    assert {key: tuple(value.shape) for key, value in made.state_dict().items()} == shapes
    assert made.config.attention_head_dim == unet.config.attention_head_dim and made.config.cross_attention_dim == 2048
