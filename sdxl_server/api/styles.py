"""Prompt styles in AUTOMATIC1111's ``styles.csv`` format, applied to a request before its job is queued.

A style is a named piece of prompt and negative prompt (``name,prompt,negative_prompt``). A
request's ``styles`` are applied in order as A1111's ``apply_styles_to_prompt`` does: a style text
holding ``{prompt}`` has the prompt put there, any other is appended after ", " (an empty one adds
nothing). The prompt as styled is what the job encodes and the metadata records, beside the names.
The file is ``STYLES_FILE``, read again when its modification time or size changes; an absent
file is no styles, a malformed one is no styles and a problem listed by ``GET /api/v1/styles``
(never a 500). Never imports torch.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ..errors import ValidationFailed
from ..params import GenerationParams
from . import keys

MAX_STYLES_FILE_BYTES = 4 * 1024 * 1024  # a styles file is text a person wrote: more is a mistake


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str

    def describe(self) -> dict[str, str]:
        """A1111's shape (``GET /sdapi/v1/prompt-styles``)."""
        return {"name": self.name, "prompt": self.prompt, "negative_prompt": self.negative_prompt}


@dataclass(frozen=True)
class StyleList:
    """The styles of one reading of the file, and why there are none if it could not be read."""

    styles: dict[str, Style] = field(default_factory=dict)
    problem: str | None = None


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style applied to a prompt, as A1111's ``merge_prompts``."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, styles: list[Style], longest: int | None = None) -> tuple[str, str]:
    """The prompt and negative prompt with ``styles`` applied in order; ValueError as soon as one
    is longer than ``longest`` (a style may hold ``{prompt}`` twice: twenty of them would double
    the prompt twenty times)."""
    for style in styles:
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
        if longest is not None and max(len(prompt), len(negative_prompt)) > longest:
            raise ValueError(f"the prompt with its styles is longer than {longest} characters (MAX_PROMPT_LENGTH)")
    return prompt, negative_prompt


def parse_styles(text: str) -> dict[str, Style]:
    """The styles of a ``styles.csv`` text, read as A1111 reads it (``csv.DictReader``, spaces after
    a comma skipped, ``text`` as the older name of ``prompt``); rows without a name are skipped,
    a later row of the same name wins. Raises ValueError (``csv.Error`` too) if it is no styles file."""
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    columns = set(reader.fieldnames or ())
    if "name" not in columns or not columns & {"prompt", "text"}:
        raise ValueError("the first line must name the columns: name,prompt,negative_prompt")
    styles: dict[str, Style] = {}
    for row in reader:
        name = (row.get("name") or "").strip()
        if name:
            prompt = row.get("prompt") if "prompt" in columns else row.get("text")
            styles[name] = Style(name, prompt or "", row.get("negative_prompt") or "")
    return styles


class StyleFile:
    """``STYLES_FILE``, read once and again only when it changes (its mtime or size)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._read = StyleList()

    def current(self) -> StyleList:
        """The styles as the file is now (blocking: call it off the event loop)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return StyleList()
        except OSError as exc:
            return StyleList(problem=f"cannot read {self.path}: {exc.strerror or exc}")
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._read, self._stamp = self._load(stat.st_size), stamp
            return self._read

    def _load(self, size: int) -> StyleList:
        if size > MAX_STYLES_FILE_BYTES:
            return StyleList(problem=f"{self.path} is {size} bytes; at most {MAX_STYLES_FILE_BYTES}")
        try:
            return StyleList(parse_styles(self.path.read_text(encoding="utf-8-sig")))
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
            return StyleList(problem=f"{self.path} is not a styles file: {exc}")


async def current_styles(app: web.Application) -> StyleList:
    return await asyncio.to_thread(app[keys.STYLES].current)


async def with_styles(app: web.Application, params: GenerationParams) -> GenerationParams:
    """``params`` with its ``styles`` applied to both prompts; an unknown name is a 422 naming
    ``styles`` and listing the styles there are, and so is a styled prompt over MAX_PROMPT_LENGTH."""
    if not params.styles:
        return params
    known = await current_styles(app)
    # "None" is AIYA's (and A1111's UI's) "no style", which A1111 skips: so here, unless STYLES_FILE names one so.
    names = tuple(name for name in params.styles if name != "None" or name in known.styles)
    if names != params.styles:
        params = dataclasses.replace(params, styles=names)
        if not names:
            return params
    unknown = [name for name in params.styles if name not in known.styles]
    if unknown:
        there = ", ".join(sorted(known.styles)[:50]) or ("none" + (f" ({known.problem})" if known.problem else ""))
        raise ValidationFailed(f"unknown style {unknown[0][:80]!r}: the styles are {there} (GET /api/v1/styles)",
                               fields={"styles": [f"Unknown style: {unknown[0][:80]}."]})
    longest = app[keys.SETTINGS].max_prompt_length
    try:
        prompt, negative = apply_styles(params.prompt, params.negative_prompt,
                                        [known.styles[n] for n in params.styles], longest)
    except ValueError as exc:
        raise ValidationFailed(str(exc), fields={"styles": [f"The styled prompt is longer than {longest} characters."]}) from None
    return dataclasses.replace(params, prompt=prompt, negative_prompt=negative)


async def list_styles(request: web.Request) -> web.Response:
    """``GET /api/v1/styles``: the styles of STYLES_FILE and, if it could not be read, why."""
    found = await current_styles(request.app)
    return web.json_response({"styles_file": str(request.app[keys.STYLES].path),
                              "styles": [style.describe() for style in found.styles.values()],
                              "problem": found.problem})


async def a1111_prompt_styles(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/prompt-styles``: A1111's shape, ``[{name, prompt, negative_prompt}]``."""
    return web.json_response([style.describe() for style in (await current_styles(request.app)).styles.values()])
