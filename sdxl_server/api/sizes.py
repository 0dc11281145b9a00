"""Fitting a size a client asks for into the server's limits (the compatible APIs only).

Clients written for OpenAI or AUTOMATIC1111 ask for sizes they know (DALL·E 3's ``1792x1024``,
GPT-image's ``1536x1024``, SillyTavern's ``1344x768`` or ``960x540``) whatever this server's
``MAX_WIDTH``/``MAX_HEIGHT`` are. :func:`fit_size` keeps the aspect ratio, scales the size down to
the limits (or up to the 64-pixel minimum), snaps each side to a multiple of 8 and prefers one of
SDXL's native training sizes when one is close in shape and pixel count; a shape the limits cannot
hold (``1000x7``: wider than ``MAX_WIDTH`` by 64) is refused, naming the most extreme ones they can.
The server's own API stays strict. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ValidationFailed
from .schemas import MIN_SIZE

# The sizes SDXL was trained at (about one megapixel), both orientations.
SDXL_NATIVE = tuple(
    {(w, h) for base in ((1024, 1024), (1152, 896), (1216, 832), (1344, 768), (1536, 640)) for w, h in (base, base[::-1])}
)
ASPECT_TOLERANCE = 0.03  # a native size may differ this much in aspect ratio (relative)
PIXEL_TOLERANCE = 0.15  # ... and this much in pixel count


def fit_size(width: int, height: int, max_width: int, max_height: int,
             names: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The size to make for a requested ``width`` x ``height`` (both > 0): see the module docstring.
    A shape the limits cannot hold (``1000x7``) is refused rather than stretched: the client would
    get another picture than it asked for (errors name the fields as ``names`` says: ours -> theirs)."""
    _check_shape(width, height, max_width, max_height, names)
    scale = min(1.0, max_width / width, max_height / height)
    scale = max(scale, MIN_SIZE / min(width, height))  # tiny requests grow to the minimum
    fitted = (_snap(width * scale, max_width), _snap(height * scale, max_height))
    return _native_near(width / height, fitted, max_width, max_height) or fitted


def _check_shape(width: int, height: int, max_width: int, max_height: int, names: Mapping[str, str] | None) -> None:
    widest, tallest = max_width // 8 * 8 / MIN_SIZE, max_height // 8 * 8 / MIN_SIZE
    if width / height <= widest * (1 + ASPECT_TOLERANCE) and height / width <= tallest * (1 + ASPECT_TOLERANCE):
        return
    message = (f"{width}x{height} cannot keep its shape within the limits (MAX_WIDTH {max_width}, MAX_HEIGHT "
               f"{max_height}, sides at least {MIN_SIZE}): the most extreme shapes that can be made are "
               f"{max_width // 8 * 8}x{MIN_SIZE} ({widest:g}:1) and {MIN_SIZE}x{max_height // 8 * 8} (1:{tallest:g})")
    raise ValidationFailed(message, fields={"width": [message], "height": [message]}).renamed(names)


def _snap(value: float, maximum: int) -> int:
    return min(max(MIN_SIZE, int(value / 8 + 0.5) * 8), maximum // 8 * 8)  # halves round up


def _native_near(aspect: float, fitted: tuple[int, int], max_width: int, max_height: int) -> tuple[int, int] | None:
    pixels = fitted[0] * fitted[1]
    close = [
        (w, h) for w, h in SDXL_NATIVE
        if w <= max_width and h <= max_height
        and abs(w / h - aspect) <= ASPECT_TOLERANCE * aspect
        and abs(w * h - pixels) <= PIXEL_TOLERANCE * pixels
    ]
    return min(close, key=lambda size: abs(size[0] / size[1] - aspect), default=None)


MAX_SIDE = 100_000  # a side a client may ask for (then fitted to the limits)


def parse_size(text: str) -> tuple[int, int] | None:
    """``'WIDTHxHEIGHT'`` (ASCII digits, each side 1 to ``MAX_SIDE``) as a pair, else None. The
    digits are counted before ``int()`` reads them: Python refuses more than 4300 (``ValueError``)."""
    width, sep, height = text.partition("x")
    if not sep or not (width.isascii() and width.isdigit() and height.isascii() and height.isdigit()):
        return None
    if max(len(width), len(height)) > len(str(MAX_SIDE)):
        return None
    if not (0 < int(width) <= MAX_SIDE and 0 < int(height) <= MAX_SIDE):
        return None
    return int(width), int(height)
