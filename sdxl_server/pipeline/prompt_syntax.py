"""AUTOMATIC1111's prompt syntax, as plain text processing (no torch, no tokenizer).

- ``(text)`` multiplies the attention to ``text`` by 1.1, ``((text))`` by 1.1², ``[text]`` divides it
  by 1.1, ``(text:1.3)`` sets the multiplier to 1.3; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the
  literal characters.
- ``BREAK`` (upper case, a word of its own) ends the current 75-token chunk.
- A closing bracket without its opening one is text; an opening bracket never closed applies its
  multiplier to the rest of the prompt. Both exactly as A1111's ``parse_prompt_attention`` does,
  and the tests replay the examples of its doctests.
- ``<lora:name:weight>`` asks for a LoRA; :func:`extract_loras` takes the tags out of the text
  before encoding, as A1111 does (``<lora:name>`` means weight 1).

Where A1111 has no bound, this module has one, since a prompt is client text: a weight must stay
within ``WEIGHT_MIN`` to ``WEIGHT_MAX`` (``(x:1e400)`` or 1999 nested brackets would make it
infinite, and the image black), at most ``MAX_NESTING`` brackets may be open at once (each one
costs a pass over what it encloses), and :func:`attention_problem` says what the API refuses. Every
pattern is matched in linear time: no two quantifiers compete for the same characters.

Pure text, so the API may import it too (it checks a prompt before queueing a job).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = "BREAK"  # the marker a parsed prompt carries where a chunk must end
# Half-precision text encoders stay finite with weights well inside this range (docs/prompts-and-loras.md).
WEIGHT_MIN, WEIGHT_MAX = -10.0, 10.0
MAX_NESTING = 32  # brackets open at once; deeper ones are read as text (the API refuses the prompt)
MAX_LORA_TAGS = 32  # <lora:...> tags in one prompt (the API refuses more)

_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes: \( \) \[ \] \\ and a lone backslash
    \(|\[|                        # openings
    :\s*([+-]?[.\d]+)\s*\)|       # (text:1.3)
    \)|]|                         # closings
    [^\\()\[\]:]+|                # text
    :                             # a colon that is not a weight
    """,
    re.X,
)
# BREAK's surrounding whitespace is stripped with str methods: "\s*\bBREAK\b\s*" backtracks
# quadratically over a long run of spaces.
_BREAK = re.compile(r"\bBREAK\b")
_LORA_OPEN = re.compile(r"<lora:", re.I)


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:name:weight>`` found in a prompt; ``weight`` is None when it is not a number."""

    name: str
    weight: float | None
    text: str


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into runs of text and their attention multipliers.

    A ``BREAK`` comes back as ``("BREAK", -1.0)``. Neighbouring runs of equal weight are merged;
    an empty prompt is ``[("", 1.0)]``.
    """
    return _parse(text)[0]


def attention_problem(text: str) -> str | None:
    """Why ``text`` (without its ``<lora:...>`` tags) cannot be encoded as written, or None:
    brackets nested deeper than ``MAX_NESTING``, or a weight outside ``WEIGHT_MIN`` to ``WEIGHT_MAX``."""
    runs, too_deep = _parse(text)
    if too_deep:
        return f"brackets are nested more than {MAX_NESTING} deep"
    for run, weight in runs:
        if run and (run, weight) != (BREAK, -1.0) and not WEIGHT_MIN <= weight <= WEIGHT_MAX:
            return (f"the attention weight of {run.strip()[:40]!r} is {weight:.4g}, outside "
                    f"{WEIGHT_MIN:g} to {WEIGHT_MAX:g} (each ( multiplies by 1.1)")
    return None


def _parse(text: str) -> tuple[list[tuple[str, float]], bool]:
    """The merged runs, and whether an opening bracket was past ``MAX_NESTING`` (read as text).

    A closing bracket multiplies every run since its opening one, so bounding how many are open at
    once bounds the work to ``MAX_NESTING`` passes over the weights; text between two brackets is
    one run, however many escapes or stray brackets it holds. Runs are kept flat (run ``i`` is
    ``pieces[starts[i]:starts[i + 1]]`` at ``weights[i]``): no object per run."""
    pieces: list[str] = []
    starts: list[int] = []
    weights: list[float] = []
    round_open: list[int] = []
    square_open: list[int] = []
    too_deep = False
    fresh = 0  # runs from here on were added since the last bracket or BREAK: text may join them

    def add(piece: str, weight: float = 1.0) -> None:
        if len(starts) <= fresh:
            starts.append(len(pieces))
            weights.append(weight)
        pieces.append(piece)

    def multiply_from(start: int, multiplier: float) -> None:
        weights[start:] = [weight * multiplier for weight in weights[start:]]

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            add(token[1:])
            continue
        if token in ("(", "[") and len(round_open) + len(square_open) >= MAX_NESTING:
            too_deep = True
            add(token)
            continue
        if token == "(":
            round_open.append(len(starts))
        elif token == "[":
            square_open.append(len(starts))
        elif weight is not None and round_open and _is_number(weight):
            multiply_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for index, part in enumerate(_break_parts(token)):
                if index:
                    fresh = len(starts)
                    add(BREAK, -1.0)
                    fresh = len(starts)
                add(part)
            continue
        fresh = len(starts)
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)
    return _merged(pieces, starts, weights), too_deep


def _break_parts(token: str) -> list[str]:
    """``token`` split at each ``BREAK`` word, the whitespace around each one dropped."""
    parts = _BREAK.split(token) if BREAK in token else [token]
    last = len(parts) - 1
    for index in range(len(parts)):
        if index > 0:
            parts[index] = parts[index].lstrip()
        if index < last:
            parts[index] = parts[index].rstrip()
    return parts


def _merged(pieces: list[str], starts: list[int], weights: list[float]) -> list[tuple[str, float]]:
    """Neighbouring runs of equal weight as one, each joined once (``+=`` would be quadratic)."""
    if not starts:
        return [("", 1.0)]
    merged: list[tuple[str, float]] = []
    first = 0
    for index in range(1, len(starts) + 1):
        if index == len(starts) or weights[index] != weights[first]:
            end = starts[index] if index < len(starts) else len(pieces)
            merged.append(("".join(pieces[starts[first]:end]), weights[first]))
            first = index
    return merged


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:  # "(a:.)" or "(a:1.2.3)": A1111 would fail; here the colon part stays text
        return False
    return True


def plain_runs(text: str) -> list[tuple[str, float]]:
    """``PROMPT_SYNTAX=plain``: the whole prompt is text of weight 1, brackets and all."""
    return [(text, 1.0)]


def extract_loras(prompt: str) -> tuple[str, list[LoraTag]]:
    """Take every ``<lora:name:weight>`` out of ``prompt``: (the text without them, the tags)."""
    pieces: list[str] = []
    tags: list[LoraTag] = []
    at = 0
    for start, end, tag in _lora_tags(prompt):
        pieces.append(prompt[at:start])
        tags.append(tag)
        at = end
    pieces.append(prompt[at:])
    return "".join(pieces), tags


def _lora_tags(prompt: str) -> Iterator[tuple[int, int, LoraTag]]:
    """Each tag's span and reading, as ``<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>`` would find
    them, in one pass: the ``>`` that ends a tag is searched once for all the ``<lora:`` before it
    (the pattern rescans the rest of the prompt from each one)."""
    end = close = -1
    for match in _LORA_OPEN.finditer(prompt):
        if match.start() < end:  # inside the previous tag
            continue
        if close < match.end():
            close = prompt.find(">", match.end())
            if close < 0:
                return
        name, colon, rest = prompt[match.end():close].partition(":")
        if not name:
            continue
        end = close + 1
        yield match.start(), end, LoraTag(name.strip(), _tag_weight(rest.partition(":")[0] if colon else None),
                                          prompt[match.start():end])


def _tag_weight(raw: str | None) -> float | None:
    if raw is None or raw.strip() == "":
        return 1.0
    try:
        return float(raw)
    except ValueError:
        return None
