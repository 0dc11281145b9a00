"""Long and weighted prompts: 75-token chunks through both SDXL text encoders, A1111's weights,
PROMPT_SYNTAX=plain, and the prompt kept as sent in the metadata."""

from __future__ import annotations

import pytest
import torch
from images import generate_png, pixels

from sdxl_server.pipeline.prompt_encoding import count_tokens, encode_prompts

# The tiny model's tokenizer makes one token per letter: 40 words of 5 letters are 200 tokens,
# and their first 15 words the first 75.
LONG = " ".join(["abcde", "fghij", "klmno", "pqrst"] * 10)
FIRST_75 = " ".join(LONG.split()[:15])


@pytest.fixture(scope="module")
def tiny_pipe(tiny_cache):
    from diffusers import StableDiffusionXLPipeline

    from sdxl_server.pipeline.tiny import ensure_tiny_model

    return StableDiffusionXLPipeline.from_pretrained(ensure_tiny_model(tiny_cache))


def test_a_short_plain_prompt_encodes_exactly_as_diffusers_does(tiny_pipe):
    with torch.inference_mode():
        ours = encode_prompts(tiny_pipe, "a red fox", "blurry", "a1111")
        theirs = tiny_pipe.encode_prompt("a red fox", negative_prompt="blurry", device="cpu")
    assert torch.equal(ours["prompt_embeds"], theirs[0])
    assert torch.equal(ours["negative_prompt_embeds"], theirs[1])
    assert torch.equal(ours["pooled_prompt_embeds"], theirs[2])
    assert torch.equal(ours["negative_pooled_prompt_embeds"], theirs[3])


def test_clip_skip_encodes_exactly_as_diffusers_one_layer_less(tiny_pipe):
    """Our clip_skip counts as A1111 does (1 = the usual layer); diffusers counts the layers skipped
    beyond SDXL's penultimate: ours 2 is theirs 1, in both encoders, the pooled output unchanged.
    diffusers skips for the prompt only; A1111 (and we) encode the negative prompt the same way,
    so ours is what diffusers makes of the negative text given as a prompt."""
    with torch.inference_mode():
        ours = encode_prompts(tiny_pipe, "a red fox", "blurry", "a1111", clip_skip=2)
        theirs = tiny_pipe.encode_prompt("a red fox", device="cpu", clip_skip=1, do_classifier_free_guidance=False)
        negative = tiny_pipe.encode_prompt("blurry", device="cpu", clip_skip=1, do_classifier_free_guidance=False)
        usual = encode_prompts(tiny_pipe, "a red fox", "blurry", "a1111")
    assert torch.equal(ours["prompt_embeds"], theirs[0])
    assert torch.equal(ours["pooled_prompt_embeds"], theirs[2])
    assert torch.equal(ours["negative_prompt_embeds"], negative[0])
    assert torch.equal(ours["negative_pooled_prompt_embeds"], negative[2])
    assert not torch.equal(ours["prompt_embeds"], usual["prompt_embeds"])


def test_long_prompt_is_chunked_for_both_encoders_and_the_negative_padded(tiny_pipe):
    assert count_tokens(tiny_pipe.tokenizer, LONG, "a1111") == {
        "tokens": 200, "chunks": 3, "chunk_tokens": [75, 75, 50], "chunk_size": 75
    }
    with torch.inference_mode():
        out = encode_prompts(tiny_pipe, LONG, "blurry", "a1111")
        first = encode_prompts(tiny_pipe, FIRST_75, "", "a1111")
    width = tiny_pipe.text_encoder.config.hidden_size + tiny_pipe.text_encoder_2.config.hidden_size
    assert out["prompt_embeds"].shape == (1, 3 * 77, width)
    assert out["negative_prompt_embeds"].shape == (1, 3 * 77, width)
    # The first chunk is the first 75 tokens alone, and so is the pooled embedding.
    assert torch.equal(out["prompt_embeds"][:, :77], first["prompt_embeds"])
    assert torch.equal(out["pooled_prompt_embeds"], first["pooled_prompt_embeds"])


def test_break_ends_a_chunk(tiny_pipe):
    assert count_tokens(tiny_pipe.tokenizer, "abc BREAK def", "a1111")["chunk_tokens"] == [3, 3]
    assert count_tokens(tiny_pipe.tokenizer, "abc BREAK def", "plain")["chunk_tokens"] == [11]


def test_weights_keep_the_chunk_mean(tiny_pipe):
    with torch.inference_mode():
        plain = encode_prompts(tiny_pipe, "cat", "", "a1111")["prompt_embeds"]
        weighted = encode_prompts(tiny_pipe, "(cat:1.5)", "", "a1111")["prompt_embeds"]
    assert not torch.equal(plain, weighted)
    assert torch.allclose(plain.mean(), weighted.mean(), atol=1e-5)


async def test_a_200_token_prompt_changes_the_image_beyond_its_first_75(client):
    assert await pixels(client, {"prompt": LONG, "seed": 3}) != await pixels(client, {"prompt": FIRST_75, "seed": 3})


async def test_a_weight_changes_the_image_and_the_metadata_keeps_the_prompt_as_sent(client):
    data, weighted = await generate_png(client, {"prompt": "a (cat:1.5)", "seed": 3})
    assert data["meta"]["prompt"] == "a (cat:1.5)"
    assert weighted.tobytes() != await pixels(client, {"prompt": "a cat", "seed": 3})
    # An escaped bracket is literal text: not the weighted image.
    assert weighted.tobytes() != await pixels(client, {"prompt": "a \\(cat:1.5\\)", "seed": 3})


async def test_plain_syntax_reads_brackets_as_text(make_client, settings):
    a1111 = await make_client(settings)
    escaped = await pixels(a1111, {"prompt": "a \\(cat:1.5\\)", "seed": 3})
    weighted = await pixels(a1111, {"prompt": "a (cat:1.5)", "seed": 3})
    await a1111.close()
    plain = await make_client(settings.replace(prompt_syntax="plain"))
    literal = await pixels(plain, {"prompt": "a (cat:1.5)", "seed": 3})
    assert literal == escaped and literal != weighted


async def test_the_token_counter_counts_as_the_encoder_chunks(client):
    resp = await client.post("/api/v1/tokenize", json={"prompt": LONG + " <lora:ink:0.5>", "negative_prompt": "abc BREAK de"})
    assert resp.status == 200
    counts = await resp.json()
    assert counts["prompt"] == {"tokens": 200, "chunks": 3, "chunk_tokens": [75, 75, 50], "chunk_size": 75}
    assert counts["negative_prompt"]["chunk_tokens"] == [3, 2]
    bad = await client.post("/api/v1/tokenize", json={"negative_prompt": "x"})
    assert bad.status == 422 and "prompt" in (await bad.json())["fields"]


@pytest.fixture(scope="module")
def half_pipe(tiny_cache):
    from diffusers import StableDiffusionXLPipeline

    from sdxl_server.pipeline.tiny import ensure_tiny_model

    return StableDiffusionXLPipeline.from_pretrained(ensure_tiny_model(tiny_cache), torch_dtype=torch.float16)


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("prompt", ["(cat:" + "9" * 400 + ")", "(" * 1999 + "cat" + ")" * 1999, "(cat:-1e30) dog", "(cat:10)"])
def test_no_weight_makes_an_embedding_infinite(tiny_pipe, half_pipe, half, prompt):
    """The API refuses such weights, but a job queued before that check (or a mean that cancels
    out) must not reach the UNet as NaN: the image would be black. Half precision too (GPUs)."""
    with torch.inference_mode():
        out = encode_prompts(half_pipe if half else tiny_pipe, prompt, "(blur:" + "9" * 400 + ")", "a1111")
    assert all(torch.isfinite(out[name]).all() for name in ("prompt_embeds", "negative_prompt_embeds"))
