"""Output files: atomic, served only by their own names, never anything outside OUTPUT_DIR."""

from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from sdxl_server.errors import StorageFailed
from sdxl_server.jobs.outputs import OutputStore

OUTPUT_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def settings(settings):
    return settings.replace(preload=False)


def test_write_outputs_is_whole_or_nothing(tmp_path):
    store = OutputStore(tmp_path / "out")
    store.prepare()
    meta = {"prompt": "p", "negative_prompt": "", "steps": 1, "scheduler": "euler", "guidance_scale": 7.0,
            "seed": 1, "width": 8, "height": 8, "model_id": "tiny"}
    store.write_outputs(OUTPUT_ID, Image.new("RGB", (8, 8)), meta)
    assert store.image_path(OUTPUT_ID).is_file() and store.metadata_path(OUTPUT_ID).is_file()

    def files():
        return sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file())

    before = files()
    with pytest.raises(TypeError):  # metadata that cannot be written as JSON
        store.write_outputs("a" * 32, Image.new("RGB", (8, 8)), {**meta, "bad": object()})
    assert files() == before

    shutil.move(store.metadata_dir, tmp_path / "moved")
    store.metadata_dir.write_text("")  # the image can be written, its metadata cannot
    with pytest.raises(StorageFailed, match="could not write the output"):
        store.write_outputs("b" * 32, Image.new("RGB", (8, 8)), meta)
    assert not store.image_path("b" * 32).exists()
    assert [p.name for p in store.images_dir.iterdir()] == [f"{OUTPUT_ID}.png"]  # no temporary file either


def test_prepare_removes_partial_files_from_a_crash(tmp_path):
    store = OutputStore(tmp_path / "out")
    store.prepare()
    partial = store.images_dir / ".partial-abc123"
    partial.write_bytes(b"half a png")
    kept = store.image_path(OUTPUT_ID)
    kept.write_bytes(b"whole")
    store.close()  # the server stopped (or crashed: the lock goes with the process)
    OutputStore(tmp_path / "out").prepare()
    assert not partial.exists() and kept.exists()


@pytest.fixture
async def planted(client, settings, tmp_path):
    """A secret outside OUTPUT_DIR, and a symlink to it planted under a valid output name."""
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (settings.output_dir / "images" / f"{OUTPUT_ID}.png").symlink_to(secret)
    (settings.output_dir / "metadata" / f"{OUTPUT_ID}.json").symlink_to(secret)
    return client


@pytest.mark.parametrize(
    "path",
    [
        f"/outputs/images/{OUTPUT_ID}.png",  # planted symlink
        f"/outputs/metadata/{OUTPUT_ID}.json",  # planted symlink
        "/outputs/images/../../secret.txt",
        "/outputs/images/..%2f..%2fsecret.txt",
        "/outputs/images/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/outputs/images/%252e%252e%252fsecret.txt",
        "/outputs/images/..%5c..%5csecret.txt",
        "/outputs/images/..\\..\\secret.txt",
        "/outputs/%2e%2e/secret.txt",
        "/outputs/images/%2fetc%2fpasswd",
        "/outputs//etc/passwd",
        "/outputs/images//etc/passwd",
        "/outputs/images/",
        "/outputs/metadata/",
        "/outputs/",
        "/outputs/images/.partial-x",
        f"/outputs/images/{OUTPUT_ID}.json",
        f"/outputs/other/{OUTPUT_ID}.png",
        f"/outputs/images/{OUTPUT_ID.upper()}.png",
    ],
)
async def test_nothing_outside_output_dir_is_served(planted, path):
    resp = await planted.get(path)
    assert resp.status == 404
    assert "top secret" not in await resp.text()
    assert (await resp.json())["error"] == "not_found"


async def test_static_files_do_not_follow_symlinks_or_list(client, tmp_path):
    resp = await client.get("/static/")
    assert resp.status in (403, 404)
    resp = await client.get("/static/..%2f..%2fetc%2fpasswd")
    assert resp.status in (403, 404)
    assert "root:" not in await resp.text()


async def test_output_files_are_served_with_types(client, settings):
    resp = await client.post("/api/v1/generate", json={"prompt": "served", "steps": 1})
    body = await resp.json()
    image = await client.get(body["image_url"])
    assert image.status == 200 and image.content_type == "image/png"
    meta = await client.get(body["meta_url"])
    assert meta.status == 200 and meta.content_type == "application/json"
    assert os.stat(settings.output_dir / "images" / f"{body['id']}.png").st_mode & 0o644 == 0o644
