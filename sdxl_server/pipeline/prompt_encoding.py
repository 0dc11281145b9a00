"""Long and weighted prompts for SDXL, encoded the way AUTOMATIC1111 does.

A prompt (after :mod:`.prompt_syntax`) is a list of text runs with weights. Each run is tokenized
without special tokens, and the tokens are packed into chunks of 75 (``BREAK`` ends a chunk early).
Every chunk becomes ``<bos> + 75 tokens + <eos>`` padded to 77 and goes through **both** text
encoders; the penultimate hidden states of the two are joined (768 + 1280 = 2048 wide for SDXL)
and the chunks are laid end to end, so a 200-token prompt is 3 x 77 positions. Weights multiply
each token's embedding, then the chunk is rescaled to its original mean (A1111's way, so a weight
changes emphasis, not overall magnitude). The pooled embedding is text_encoder_2's for the first
chunk. Prompt and negative prompt are padded with empty chunks to the same number of chunks.

With all weights 1 and one chunk, the result is exactly what diffusers' own ``encode_prompt``
computes, so a short plain prompt gives the same image as before.

``clip_skip`` (A1111's count: 1 is the usual layer) moves both encoders ``clip_skip - 1`` layers
further back from the penultimate: ``hidden_states[-(clip_skip + 1)]``, which is diffusers' SDXL
``encode_prompt(clip_skip=clip_skip - 1)``. The pooled embedding is always the last layer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .embeddings import embedding_tokens
from .prompt_syntax import BREAK, WEIGHT_MAX, WEIGHT_MIN, extract_loras, parse_attention, plain_runs

CHUNK_TOKENS = 75


@dataclass
class Chunks:
    """One prompt for one tokenizer: token ids and weights, ``CHUNK_TOKENS`` or fewer per chunk."""

    ids: list[list[int]] = field(default_factory=lambda: [[]])
    weights: list[list[float]] = field(default_factory=lambda: [[]])

    def add(self, token: int, weight: float) -> None:
        if len(self.ids[-1]) == CHUNK_TOKENS:
            self.close()
        self.ids[-1].append(token)
        self.weights[-1].append(weight)

    def add_group(self, tokens: list[int], weight: float) -> None:
        """An embedding's vectors: kept in one chunk (a new one if they do not fit), as A1111 does."""
        if self.ids[-1] and len(self.ids[-1]) + len(tokens) > CHUNK_TOKENS:
            self.close()
        for token in tokens:
            self.add(token, weight)

    def close(self) -> None:
        self.ids.append([])
        self.weights.append([])

    @property
    def tokens(self) -> int:
        return sum(len(chunk) for chunk in self.ids)


def prompt_runs(prompt: str, syntax: str) -> list[tuple[str, float]]:
    """The weighted runs of ``prompt`` under ``PROMPT_SYNTAX`` (``a1111`` or ``plain``)."""
    return parse_attention(prompt) if syntax == "a1111" else plain_runs(prompt)


def chunk_prompt(tokenizer: Any, runs: list[tuple[str, float]]) -> Chunks:
    """Tokenize each run and pack the tokens into chunks; ``BREAK`` starts a new chunk. A word
    naming a textual-inversion embedding stands for all its vectors (:mod:`.embeddings`)."""
    chunks = Chunks()
    expand = embedding_tokens(tokenizer)
    for text, weight in runs:
        if weight == -1.0 and text == BREAK:
            chunks.close()
            continue
        if not text:
            continue
        for token in tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids:
            if token in expand:
                chunks.add_group(expand[token], weight)
            else:
                chunks.add(token, weight)
    return chunks


def count_tokens(tokenizer: Any, prompt: str, syntax: str) -> dict[str, Any]:
    """What the page's token counter shows: tokens, chunks and each chunk's size."""
    chunks = chunk_prompt(tokenizer, prompt_runs(prompt, syntax))
    sizes = [len(chunk) for chunk in chunks.ids]
    return {"tokens": chunks.tokens, "chunks": len(sizes), "chunk_tokens": sizes, "chunk_size": CHUNK_TOKENS}


def count_prompt_tokens(tokenizer: Any, prompt: str, syntax: str) -> dict[str, Any]:
    """:func:`count_tokens` for a prompt as a request sends it (``<lora:...>`` tags are no tokens)."""
    return count_tokens(tokenizer, extract_loras(prompt)[0] if syntax == "a1111" else prompt, syntax)


def _pad(chunks: Chunks, count: int) -> Chunks:
    while len(chunks.ids) < count:
        chunks.close()
    return chunks


def _encoder_device(module: Any) -> torch.device:
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(module)


def _layer(hidden_states: tuple[torch.Tensor, ...], clip_skip: int) -> torch.Tensor:
    """The hidden states ``clip_skip`` asks for: the penultimate layer's at 1, one layer earlier
    for each step more, held to the embedding layer's for an encoder with fewer layers (a small
    test model; SDXL's CLIP-L, the shallower encoder, has 12, which CLIP_SKIP_MAX allows for)."""
    return hidden_states[-min(clip_skip + 1, len(hidden_states))]


def _encode(tokenizer: Any, text_encoder: Any, chunks: Chunks, clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states of every chunk laid end to end, pooled output of the first chunk or None)."""
    width = CHUNK_TOKENS + 2
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = _encoder_device(text_encoder)
    states, pooled = [], None
    for ids, weights in zip(chunks.ids, chunks.weights):
        row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
        row += [pad] * (width - len(row))
        output = text_encoder(torch.tensor([row], device=device), output_hidden_states=True)
        if pooled is None and output[0].ndim == 2:
            pooled = output[0]
        hidden = _layer(output.hidden_states, clip_skip)
        if any(weight != 1.0 for weight in weights):
            hidden = _weighted(hidden, weights)
        states.append(hidden)
    return torch.cat(states, dim=1), pooled


def _weighted(hidden: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A1111's weighting: each token's embedding times its weight, then the chunk rescaled to its
    original mean. Done in float32 with the weights held to ``WEIGHT_MIN``..``WEIGHT_MAX`` (NaN as
    1) and the result held to the dtype's finite range: the API refuses weights outside that range,
    and whatever reaches the encoder (a job queued before that check, a mean that cancels out)
    must not give a half-precision embedding an infinity or a NaN, which makes a black image."""
    work = hidden.float()
    held = [min(max(weight, WEIGHT_MIN), WEIGHT_MAX) if weight == weight else 1.0 for weight in weights]
    multipliers = torch.ones(work.shape[1], dtype=work.dtype, device=work.device)
    multipliers[1:1 + len(held)] = torch.tensor(held, dtype=work.dtype)
    original_mean = work.mean()
    work = work * multipliers.reshape(1, -1, 1)
    scale = original_mean / work.mean()
    if torch.isfinite(scale):
        work = work * scale
    limit = torch.finfo(hidden.dtype).max
    return work.clamp(-limit, limit).to(hidden.dtype)


def _encode_both(pipe: Any, per_tokenizer: list[Chunks], clip_skip: int) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, pooled = [], None
    for tokenizer, text_encoder, chunks in zip(
        (pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2), per_tokenizer
    ):
        states, pooled_here = _encode(tokenizer, text_encoder, chunks, clip_skip)
        hidden.append(states)
        pooled = pooled_here if pooled_here is not None else pooled
    return torch.cat(hidden, dim=-1), pooled


def encode_prompts(pipe: Any, prompt: str, negative_prompt: str, syntax: str, clip_skip: int = 1) -> dict[str, Any]:
    """The ``prompt_embeds`` (and negative, and pooled) keyword arguments for an SDXL pipeline call.

    An empty negative prompt is left to the pipeline (SDXL base zeroes it), as before.
    """
    texts = [prompt] + ([negative_prompt] if negative_prompt else [])
    tokenizers = (pipe.tokenizer, pipe.tokenizer_2)
    chunked = [[chunk_prompt(tokenizer, prompt_runs(text, syntax)) for tokenizer in tokenizers] for text in texts]
    count = max(len(chunks.ids) for per_text in chunked for chunks in per_text)
    chunked = [[_pad(chunks, count) for chunks in per_text] for per_text in chunked]
    embeds, pooled = _encode_both(pipe, chunked[0], clip_skip)
    arguments = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if negative_prompt:
        negative, negative_pooled = _encode_both(pipe, chunked[1], clip_skip)
        arguments.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
    return arguments


def refiner_prompts(arguments: dict[str, Any], refiner: Any, clip_skip: int = 1) -> dict[str, Any]:
    """The base's prompt embeddings (:func:`encode_prompts`) as the refiner takes them: the part
    its one text encoder (the base's ``text_encoder_2``, shared) made, so weights, ``BREAK`` and
    long prompts mean the same in both phases. An empty negative prompt is encoded as the refiner's
    own pipeline would (SDXL's refiner does not zero it), as many chunks long as the prompt, from
    the layer ``clip_skip`` chose for the prompt."""
    width = refiner.text_encoder_2.config.hidden_size
    refined = {"prompt_embeds": arguments["prompt_embeds"][..., -width:],
               "pooled_prompt_embeds": arguments["pooled_prompt_embeds"]}
    if "negative_prompt_embeds" in arguments:
        refined.update(negative_prompt_embeds=arguments["negative_prompt_embeds"][..., -width:],
                       negative_pooled_prompt_embeds=arguments["negative_pooled_prompt_embeds"])
    elif not refiner.config.get("force_zeros_for_empty_prompt", True):
        count = refined["prompt_embeds"].shape[1] // (CHUNK_TOKENS + 2)
        negative, pooled = _encode(refiner.tokenizer_2, refiner.text_encoder_2, _pad(Chunks(), count), clip_skip)
        refined.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=pooled)
    return refined


def request_prompt_texts(params: Any, syntax: str) -> tuple[str, str]:
    """A request's prompt and negative prompt as text: with A1111 syntax its ``<lora:...>`` tags
    are taken out (they choose LoRAs, they are not text); the metadata keeps the prompt as sent."""
    prompt, negative = params.prompt, params.negative_prompt
    if syntax == "a1111":
        prompt, negative = extract_loras(prompt)[0], extract_loras(negative)[0]
    return prompt, negative


def encode_request_prompts(pipe: Any, params: Any, syntax: str) -> dict[str, Any]:
    """:func:`encode_prompts` for a request's :func:`request_prompt_texts`."""
    return encode_prompts(pipe, *request_prompt_texts(params, syntax), syntax, params.clip_skip)
