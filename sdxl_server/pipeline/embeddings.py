"""Textual-inversion embeddings loaded into a pipeline's two tokenizers and text encoders.

Each usable file in ``EMBEDDINGS_DIR`` (:mod:`.embedding_files`) becomes, in both tokenizers, one
added token per vector: ``name``, ``name_1``, ... (diffusers' ``load_textual_inversion``, ``clip_l``
into the first encoder and ``clip_g`` into the second). They are loaded once per model load on the
worker thread, before the memory options (offload hooks) are applied.

Two things diffusers leaves to its own prompt path are done here for ours (:mod:`.prompt_encoding`):

* a prompt names an embedding by one word, which must stand for all its vectors. Each tokenizer
  carries ``{first id: every id}`` under :data:`TOKENS`, and the chunking expands it (diffusers'
  ``maybe_convert_prompt`` does the same to the text);
* A1111 matches a name as a whole word. Tokenizers match added tokens anywhere (``xnamex`` would
  hold ``name``), so the tokens are re-added as ``single_word``: only a name standing alone, or
  beside punctuation, is the embedding.

What was loaded and what was skipped (with why) rides on the pipe under :data:`LISTING`, so it
follows the model through switches and the model cache, and :meth:`Engine.describe` reads it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ..errors import short_message
from .embedding_files import PARTS, EmbeddingCatalog, EmbeddingFile

log = logging.getLogger(__name__)

TOKENS = "sdxl_server_embedding_tokens"  # on a tokenizer: {first token id: the ids of every vector}
LISTING = "sdxl_server_embeddings"  # on a pipe: {"loaded": {...}, "skipped": {...}} in A1111's shape


def empty_listing() -> dict[str, dict[str, Any]]:
    return {"loaded": {}, "skipped": {}}


def listing(pipe: Any) -> dict[str, dict[str, Any]]:
    """What ``pipe`` has loaded and skipped (empty for a pipe loaded without embeddings)."""
    return getattr(pipe, LISTING, None) or empty_listing()


def embedding_tokens(tokenizer: Any) -> dict[int, list[int]]:
    """``{first id: every id}`` of the embeddings ``tokenizer`` knows (none: empty)."""
    return getattr(tokenizer, TOKENS, None) or {}


def _pairs(pipe: Any) -> list[tuple[str, Any, Any]]:
    return [(PARTS[0], pipe.tokenizer, pipe.text_encoder), (PARTS[1], pipe.tokenizer_2, pipe.text_encoder_2)]


def _tokens(file: EmbeddingFile) -> list[str]:
    return [file.name] + [f"{file.name}_{i}" for i in range(1, file.vectors)]


def _misfit(pipe: Any, file: EmbeddingFile) -> str | None:
    """Why ``file`` cannot go into this model (None: it can): widths or a name the tokenizers know."""
    widths = tuple(encoder.get_input_embeddings().weight.shape[-1] for _, _, encoder in _pairs(pipe))
    if file.widths != widths:
        return (f"made for text encoders {file.widths[0]} and {file.widths[1]} wide; this model's are "
                f"{widths[0]} and {widths[1]} (an embedding for another model family)")
    if pipe.tokenizer is pipe.tokenizer_2:
        return "this model's two text encoders share one tokenizer"
    for _, tokenizer, _ in _pairs(pipe):
        vocabulary = tokenizer.get_vocab()
        taken = [token for token in _tokens(file) if token in vocabulary or token.lower() in vocabulary]
        if taken:
            return f"the name {taken[0]!r} is already a token of the tokenizer (rename the file)"
    return None


def _load_one(pipe: Any, file: EmbeddingFile) -> None:
    """Both tensors into their encoders, then the tokens made whole-word and their expansion noted."""
    from safetensors.torch import load_file
    from transformers import AddedToken

    tensors = load_file(str(file.path))
    tokens = _tokens(file)
    for part, tokenizer, encoder in _pairs(pipe):
        pipe.load_textual_inversion(tensors[part], token=file.name, text_encoder=encoder, tokenizer=tokenizer)
        tokenizer.add_tokens([AddedToken(token, single_word=True, normalized=True) for token in tokens])
        ids = tokenizer.convert_tokens_to_ids(tokens)
        setattr(tokenizer, TOKENS, {**embedding_tokens(tokenizer), ids[0]: ids})


def load_embeddings(pipe: Any, catalog: EmbeddingCatalog) -> dict[str, dict[str, Any]]:
    """Load every usable embedding of ``catalog``'s folder into ``pipe``; the listing (also kept on
    the pipe). A file that cannot be used is skipped with its reason; none stops the model loading."""
    loaded: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    for file in sorted(catalog.refresh(), key=lambda found: found.name):
        problem = file.problem or _misfit(pipe, file)
        if problem is None:
            try:
                _load_one(pipe, file)
            except Exception as exc:  # noqa: BLE001 - one bad file is listed, never the model's failure
                problem = f"could not be loaded: {short_message(exc)}"
        if problem:
            log.warning("embedding %s (%s) skipped: %s", file.name, file.path, problem)
            skipped[file.name] = replace(file, problem=problem).a1111()
        else:
            loaded[file.name] = file.a1111()
    if loaded or skipped:
        log.info("embeddings: %d loaded, %d skipped from %s", len(loaded), len(skipped), catalog.root)
    result = {"loaded": loaded, "skipped": skipped}
    setattr(pipe, LISTING, result)
    return result
