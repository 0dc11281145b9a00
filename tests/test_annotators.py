"""The preprocessors that run an annotator model (depth, normals, pose, ADE20K segmentation): the
maps drawn as the A1111 extension draws them, the folders of ANNOTATOR_DIR read and refused with
their reasons, and on a live server with the project's tiny random-weights annotators: listed,
previewed, used by a ControlNet unit on our API and A1111's, and a broken model a 422, never a 500."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import numpy as np
import pytest
from images import b64 as png_b64
from PIL import Image

from sdxl_server.pipeline.annotator_files import AnnotatorCatalog
from sdxl_server.pipeline.annotator_maps import ADE20K_PALETTE, depth_map, normal_map, openpose_points, pose_map, segment_map
from sdxl_server.pipeline.annotators import Annotators
from sdxl_server.pipeline.preprocessors import control_map
from sdxl_server.pipeline.tiny import ensure_tiny_controlnet
from sdxl_server.pipeline.tiny_annotators import write_tiny_annotators

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


# --- the maps ----------------------------------------------------------------------------------

def test_depth_maps_make_near_bright():
    relative = np.array([[0.0, 1.0], [2.0, 4.0]])  # inverse depth: 4 is nearest
    assert depth_map(relative, metric=False).tolist() == [[0, 63], [127, 255]]
    metric = np.linspace(1.0, 10.0, 100).reshape(10, 10)  # distance: 1 is nearest
    made = depth_map(metric, metric=True)
    assert made[0, 0] == 255 and made[-1, -1] == 0 and (np.diff(made.ravel().astype(int)) <= 0).all()


def test_normals_of_a_flat_depth_face_the_viewer_and_a_slope_tilts_them():
    flat = normal_map(np.full((16, 16), 3.0), 0.4)
    assert (flat == (127, 127, 255)).all()
    ramp = normal_map(np.tile(np.linspace(0, 10, 16), (16, 1)), 0.0)  # deeper to the right
    assert ramp[8, 8, 0] > 127 and ramp[8, 8, 1] == 127 and ramp[8, 8, 2] < 255
    hidden = normal_map(np.tile(np.linspace(0, 10, 16), (16, 1)), 0.99)  # all below the background threshold
    assert (hidden[:, :-1] == (127, 127, 255)).all()


def test_segments_take_ade20k_colours():
    labels = np.array([[0, 2], [12, 149]])
    made = segment_map(labels)
    assert made[0, 0].tolist() == [120, 120, 120] and made[0, 1].tolist() == [6, 230, 230]
    assert made[1, 0].tolist() == ADE20K_PALETTE[12].tolist() == [150, 5, 61]  # person
    assert len(ADE20K_PALETTE) == 150 and len({tuple(c) for c in ADE20K_PALETTE.tolist()}) >= 148


def test_a_pose_is_drawn_as_openposes_skeleton():
    keypoints = np.zeros((17, 2))
    scores = np.zeros(17)
    keypoints[5], keypoints[6] = (60, 40), (20, 40)  # left and right shoulder
    keypoints[8] = (20, 80)  # right elbow
    scores[[5, 6, 8]] = 0.9
    points = openpose_points(keypoints, scores)
    assert points[1] == (40.0, 40.0)  # the neck, between the shoulders
    assert points[2] == (20.0, 40.0) and points[3] == (20.0, 80.0) and points[0] is None
    canvas = pose_map([points], (96, 96))
    assert canvas[40, 30].tolist() == [153, 0, 0]  # neck to right shoulder: red at 60%
    assert canvas[60, 20].tolist() == [153, 102, 0]  # right shoulder to elbow: orange at 60%
    assert canvas[40, 40].tolist() == [255, 85, 0]  # the neck's joint
    assert canvas[5, 5].tolist() == [0, 0, 0] and canvas[90, 90].tolist() == [0, 0, 0]


# --- the folders -------------------------------------------------------------------------------

def _config(folder, **config):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_folders_that_cannot_run_say_why(tmp_path):
    catalog = AnnotatorCatalog(tmp_path)
    assert "depth_zoe, which has none" in catalog.problem("depth_zoe") and "Intel/zoedepth-nyu-kitti" in catalog.problem("depth_zoe")
    _config(tmp_path / "depth_midas", architectures=["BertModel"])
    assert "BertModel, not a transformers depth model" in catalog.problem("depth_midas")
    assert catalog.problem("normal_midas") == catalog.problem("depth_midas")  # the same folder
    _config(tmp_path / "seg_ofade20k", architectures=["SegformerForSemanticSegmentation"], num_labels=19)
    assert "19 outputs, not ADE20K's 150 classes" in catalog.problem("seg_ofade20k")
    _config(tmp_path / "openpose", architectures=["VitPoseForPoseEstimation"], id2label={str(i): f"k{i}" for i in range(17)})
    (tmp_path / "openpose" / "pytorch_model.bin").write_bytes(b"pickle")
    assert "no .safetensors weights" in catalog.problem("openpose")
    (tmp_path / "openpose" / "config.json").write_text(json.dumps({"architectures": ["VitPoseForPoseEstimation"], "num_labels": 2}))
    assert "2 outputs, not COCO's 17 keypoints" in catalog.problem("openpose")
    (tmp_path / "depth_anything").mkdir()
    (tmp_path / "depth_anything" / "config.json").write_text("{not json")
    assert "cannot be read" in catalog.problem("depth_anything")


# --- on a live server --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def annotator_dir(tmp_path_factory):
    root = write_tiny_annotators(tmp_path_factory.mktemp("annotators"))
    broken = root / "seg_ufade20k"  # a model that names itself right but whose weights do not load
    broken.mkdir()
    config = json.loads((root / "seg_ofade20k" / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return root


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnet")
    ensure_tiny_controlnet(root / "tiny-depth")
    return root


@pytest.fixture
async def client(make_client, settings, annotator_dir, controlnet_dir):
    return await make_client(dataclasses.replace(settings, annotator_dir=annotator_dir, controlnet_dir=controlnet_dir))


def _photo(size=(64, 64)) -> Image.Image:
    """A picture with a light blob on a gradient: something for depth and segments to find."""
    y, x = np.mgrid[0:size[1], 0:size[0]]
    pixels = np.stack([x * 255 // size[0], y * 255 // size[1], np.full_like(x, 90)], axis=2).astype(np.uint8)
    pixels[10:30, 20:40] = 235
    return Image.fromarray(pixels)


def _decoded(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


async def test_listed_available_when_their_model_is_there(client, annotator_dir):
    listed = {p["name"]: p for p in (await (await client.get("/api/v1/preprocessors")).json())["preprocessors"]}
    for name in ("depth_midas", "depth_anything_v2", "normal_midas", "openpose", "seg_ofade20k"):
        assert listed[name]["available"] and listed[name]["annotator"], name
    assert not listed["depth_zoe"]["available"] and "depth_zoe, which has none" in listed["depth_zoe"]["problem"]
    modules = (await (await client.get("/controlnet/module_list")).json())["module_list"]
    assert "depth_midas" in modules and "openpose" in modules and "depth_zoe" not in modules
    types = (await (await client.get("/controlnet/control_types")).json())["control_types"]
    assert types["Depth"]["module_list"][:3] == ["none", "depth_midas", "depth_anything_v2"]
    assert types["Depth"]["default_option"] == "depth_midas" and types["Depth"]["model_list"] == ["None", "tiny-depth"]


@pytest.mark.parametrize("module", ["depth_midas", "normal_midas", "openpose", "seg_ofade20k"])
async def test_a_preview_is_the_annotators_map(client, annotator_dir, module):
    photo = _photo()
    response = await client.post("/api/v1/preprocess", json={"image": png_b64(photo), "module": module})
    assert response.status == 200, await response.text()
    made = _decoded((await response.json())["image"])
    expected = control_map(photo, module, (64, 64), annotate=Annotators(AnnotatorCatalog(annotator_dir)))
    assert made.shape == (64, 64, 3) and np.array_equal(made, np.asarray(expected))
    if module == "seg_ofade20k":
        palette = {tuple(c) for c in ADE20K_PALETTE.tolist()}
        assert {tuple(c) for c in made.reshape(-1, 3).tolist()} <= palette


async def test_a_unit_with_a_depth_preprocessor_guides_the_image_by_its_map(client):
    preview = await client.post("/api/v1/preprocess", json={"image": png_b64(_photo()), "module": "depth_midas"})
    depth = (await preview.json())["image"]
    body = {"prompt": "a room", "seed": 3, "steps": 3, "width": 64, "height": 64}
    made = await client.post("/api/v1/generate", json={**body, "controlnet": [
        {"model": "tiny-depth", "image": png_b64(_photo()), "module": "depth_midas"}]})
    premade = await client.post("/api/v1/generate", json={**body, "controlnet": [
        {"model": "tiny-depth", "image": depth, "module": "none"}]})
    assert made.status == 200 and premade.status == 200, await made.text()
    first, second = await made.json(), await premade.json()
    assert first["meta"]["control0_image_sha256"] == second["meta"]["control0_image_sha256"]  # the same map
    assert first["meta"]["controlnet"][0]["module"] == "depth_midas"
    plain = await (await client.post("/api/v1/generate", json=body)).json()
    pixels = [np.asarray(Image.open(io.BytesIO(await (await client.get(result["image_url"])).read())).convert("RGB")).astype(int)
              for result in (first, second, plain)]
    assert np.array_equal(pixels[0], pixels[1]) and np.abs(pixels[0] - pixels[2]).mean() > 1


async def test_a1111_units_and_detect_use_the_annotators(client):
    unit = {"enabled": True, "module": "depth", "model": "tiny-depth", "image": png_b64(_photo()),
            "weight": 1, "resize_mode": "Crop and Resize", "processor_res": 64}
    response = await client.post("/sdapi/v1/txt2img", json={
        "prompt": "a room", "steps": 2, "width": 64, "height": 64, "seed": 1,
        "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert len(answer["images"]) == 2  # the image, then the detected map
    detected = await client.post("/controlnet/detect", json={
        "controlnet_module": "depth", "controlnet_input_images": [png_b64(_photo())], "controlnet_processor_res": 64})
    assert detected.status == 200
    assert np.array_equal(_decoded(answer["images"][1]), _decoded((await detected.json())["images"][0]))
    assert "depth_midas" in json.loads(answer["info"])["infotexts"][0]


async def test_a_model_that_does_not_load_or_is_missing_is_a_422_naming_the_module(client):
    broken = await client.post("/api/v1/preprocess", json={"image": png_b64(_photo()), "module": "seg_ufade20k"})
    assert broken.status == 422
    assert "module" in (await broken.json())["fields"] and "failed" in (await broken.text())
    missing = await client.post("/api/v1/generate", json={"prompt": "x", "steps": 2, "width": 64, "height": 64, "controlnet": [
        {"model": "tiny-depth", "image": png_b64(_photo()), "module": "depth_zoe"}]})
    assert missing.status == 422 and "controlnet[0].module" in (await missing.json())["fields"]
    detect = await client.post("/controlnet/detect", json={"controlnet_module": "depth_zoe",
                                                           "controlnet_input_images": [png_b64(_photo())]})
    assert detect.status == 422 and "depth_zoe" in await detect.text()


def test_the_offline_demo_gets_tiny_controlnets_an_ip_adapter_and_annotators(tmp_path, capsys):
    from sdxl_server.tools.tiny_extras import main

    assert main([str(tmp_path / "models")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "controlnet: tiny-canny, tiny-union" and printed[1] == "ip-adapter: tiny-ip-adapter"
    assert printed[2].startswith("annotators: depth_midas, depth_anything_v2, normal_midas, openpose, seg_ofade20k")


async def test_the_openapi_document_offers_the_preprocessors_that_run(client):
    spec = await (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for offered in (schemas["PreprocessRequest"]["properties"]["module"]["enum"],
                    spec["components"]["schemas"]["GenerateRequest"]["properties"]["controlnet"]["items"]["properties"]["module"]["enum"]):
        assert "depth_midas" in offered and "canny" in offered
        assert "depth_zoe" not in offered and "mlsd" not in offered
