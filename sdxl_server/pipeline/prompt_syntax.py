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

Pure text, so the API may import it too (it checks LoRA names before queueing a job).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = "BREAK"  # the marker a parsed prompt carries where a chunk must end

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
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_LORA = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.I)


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
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for run in runs[start:]:
            run[1] *= multiplier

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open and _is_number(weight):
            multiply_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index:
                    runs.append([BREAK, -1.0])
                runs.append([part, 1.0])
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)
    if not runs:
        runs = [["", 1.0]]
    merged: list[list] = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(text_, weight) for text_, weight in merged]


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
    tags: list[LoraTag] = []

    def take(match: re.Match) -> str:
        raw = match.group(2)
        try:
            weight = 1.0 if raw is None or raw.strip() == "" else float(raw)
        except ValueError:
            weight = None
        tags.append(LoraTag(name=match.group(1).strip(), weight=weight, text=match.group(0)))
        return ""

    return _LORA.sub(take, prompt), tags
