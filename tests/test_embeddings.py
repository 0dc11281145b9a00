"""Textual-inversion embeddings from EMBEDDINGS_DIR: a word naming one is its vectors in both text
encoders (prompt or negative prompt), only as a whole word; files of other families are listed as
skipped with the reason; the A1111 listing and the token counter see them."""

from __future__ import annotations

import pytest
from images import pixels
from lora_builder import write_fake_safetensors

from sdxl_server.pipeline.tiny import write_tiny_embedding

BODY = {"prompt": "a lighthouse", "seed": 7}
SDXL_WIDTHS = (768, 1280)


@pytest.fixture(scope="module")
def embeddings_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings")
    write_tiny_embedding(folder / "velvet.safetensors", vectors=2, seed=1)
    write_tiny_embedding(folder / "blurry.safetensors", vectors=1, seed=2)
    write_tiny_embedding(folder / "real_sdxl.safetensors", vectors=1, widths=SDXL_WIDTHS)  # another model's widths
    write_fake_safetensors(folder / "sd15.safetensors", {"emb_params": [4, 768]})
    write_fake_safetensors(folder / "lopsided.safetensors", {"clip_l": [2, 32], "clip_g": [3, 48]})
    (folder / "broken.safetensors").write_bytes(b"garbage")
    return folder


@pytest.fixture(scope="module")
def plain_images():
    """Images from a server without embeddings, by prompt (filled by the first test that needs one)."""
    return {}


async def _plain(make_client, settings, bodies: list[dict]) -> list[bytes]:
    client = await make_client(settings)
    try:
        return [await pixels(client, body) for body in bodies]
    finally:
        await client.close()


async def test_a_named_embedding_changes_the_image_and_other_prompts_are_untouched(make_client, settings, embeddings_dir):
    bodies = [BODY, {**BODY, "prompt": "a lighthouse, velvet"}, {**BODY, "prompt": "a lighthouse, velvety xvelvet"},
              {**BODY, "negative_prompt": "blurry"}, {**BODY, "negative_prompt": "blurryish"}]
    without = await _plain(make_client, settings, bodies)
    client = await make_client(settings.replace(embeddings_dir=embeddings_dir))
    plain, named, inside_words, negative, negative_inside = [await pixels(client, body) for body in bodies]
    assert plain == without[0]  # no name: the image of a server that has no embeddings
    assert named != without[1]  # the name is the embedding's vectors, not the letters v-e-l-v-e-t
    assert inside_words == without[2]  # a word merely containing the name does not trigger it
    assert negative != without[3]  # a negative embedding
    assert negative_inside == without[4]
    assert await pixels(client, bodies[1]) == named  # reproducible
    weighted = await pixels(client, {**BODY, "prompt": "a lighthouse, (velvet:1.4)"})
    assert weighted != named  # attention weights apply to its vectors


async def test_the_a1111_listing_shows_loaded_and_skipped_with_reasons(make_client, settings, embeddings_dir):
    client = await make_client(settings.replace(embeddings_dir=embeddings_dir))
    listing = await (await client.get("/sdapi/v1/embeddings")).json()
    assert listing["loaded"] == {
        "blurry": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 80, "vectors": 1},
        "velvet": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 80, "vectors": 2},
    }
    skipped = {name: entry["reason"] for name, entry in listing["skipped"].items()}
    assert set(skipped) == {"real_sdxl", "sd15", "lopsided", "broken"}
    assert "768 and 1280 wide" in skipped["real_sdxl"] and "32 and 48" in skipped["real_sdxl"]
    assert "SD 1.x/2.x" in skipped["sd15"] and "emb_params" in skipped["sd15"]
    assert "2 vectors" in skipped["lopsided"] and "3" in skipped["lopsided"]
    assert "unreadable" in skipped["broken"]
    assert listing["skipped"]["real_sdxl"]["shape"] == 2048
    assert (await client.post("/api/v1/generate", json={**BODY, "prompt": "sd15 broken lopsided"})).status == 200


async def test_no_folder_means_no_embeddings(client):
    assert await (await client.get("/sdapi/v1/embeddings")).json() == {"loaded": {}, "skipped": {}}


async def test_the_token_count_has_every_vector_and_keeps_an_embedding_in_one_chunk(make_client, settings, embeddings_dir):
    client = await make_client(settings.replace(embeddings_dir=embeddings_dir))

    async def count(prompt: str) -> dict:
        resp = await client.post("/api/v1/tokenize", json={"prompt": prompt})
        assert resp.status == 200, await resp.text()
        return (await resp.json())["prompt"]

    assert (await count("a velvet"))["tokens"] == 1 + 2  # the tiny tokenizer: a letter a token
    assert (await count("a blurry, velvet"))["tokens"] == 1 + 1 + 1 + 2
    assert (await count("a velvety"))["tokens"] == 1 + 7
    # 74 tokens, then two vectors that do not fit the 75 left: they start the next chunk, as in A1111
    assert (await count("a" * 74 + " velvet"))["chunk_tokens"] == [74, 2]
