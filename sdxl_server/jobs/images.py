"""Input images and masks: decoded, checked and brought to the size a job runs at.

Everything a client can send wrong ends here as a clear error naming the field: not base64, not an
image, a format we do not take, a truncated file, a decompression bomb (refused from its header,
before any pixel is decoded), a mask with nothing to repaint. Animated images and JPEGs with a
Multi-Picture index (Pillow's MPO: phones' Ultra HDR photos) give their first frame, EXIF rotation
is applied (bad EXIF is ignored: the image is used as stored), every mode becomes RGB (masks: L).
Plain PIL, no torch, no aiohttp.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageTooLarge, ValidationFailed

FORMATS = ("PNG", "JPEG", "WEBP")  # what clients are asked to send
_ALSO_READ = ("MPO",)  # a JPEG with a Multi-Picture index: its first frame is the photo
MIN_SIZE = 64


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", fields={field: [message]})


def image_bytes(data: str | bytes, field: str) -> bytes:
    """The bytes of a base64 string (a ``data:`` URL too), or ``data`` itself if already bytes."""
    if isinstance(data, bytes):
        raw = data
    else:
        text = data.strip()
        if text.startswith("data:"):
            header, _, text = text.partition(",")
            if ";base64" not in header:
                raise _invalid(field, "A data: URL must be base64 (data:image/png;base64,...).")
        try:
            raw = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(field, "Not valid base64: send the image file's bytes base64-encoded.") from None
    if not raw:
        raise _invalid(field, "The image is empty.")
    return raw


def open_image(raw: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode ``raw`` (PNG, JPEG or WebP; the first frame of an animation), rotated as its EXIF
    says. Raises :class:`ImageTooLarge` before decoding when it has more than ``max_pixels``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = _opened(raw, field, max_pixels, (*FORMATS, *_ALSO_READ))
        _decode(image, field, max_pixels)
    return _upright(image)


def _opened(raw: bytes, field: str, max_pixels: int, formats: tuple[str, ...] | None) -> Image.Image:
    """``raw``'s header read and checked (its format one of ``formats``, None: any Pillow reads;
    at most ``max_pixels``), no pixel decoded yet."""
    try:
        image = Image.open(io.BytesIO(raw))  # reads the header only
    except Image.DecompressionBombError:
        raise _too_large(field, None, max_pixels) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise _invalid(field, f"Not an image: send a {', '.join(FORMATS)} file.") from None
    if formats is not None and image.format not in formats:
        raise _invalid(field, f"Unsupported image format {image.format}: send {', '.join(FORMATS)}.")
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(field, image.size, max_pixels)
    if width < 1 or height < 1:
        raise _invalid(field, "The image has no pixels.")
    return image


def _decode(image: Image.Image, field: str, max_pixels: int) -> None:
    """Decode the first frame (only that one: an animation's others may be many)."""
    try:
        image.seek(0)
        image.load()
    except Image.DecompressionBombError:
        raise _too_large(field, image.size, max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _invalid(field, f"The image could not be decoded (truncated or damaged: {exc}).") from None


def _upright(image: Image.Image) -> Image.Image:
    """The image rotated as its EXIF Orientation says; as stored when its EXIF cannot be read or
    written back (a mistyped tag makes Pillow raise any of several errors, and warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001 - any failure of the EXIF is the EXIF's, the pixels are fine
            return image


def text_chunks(raw: bytes, field: str, max_pixels: int) -> dict[str, str]:
    """An image's text chunks (a PNG's ``tEXt``/``zTXt``/``iTXt``; none for other formats), with
    :func:`open_image`'s checks: a bomb is refused from its header. A still PNG is decoded (at most
    ``max_pixels``) to reach chunks written after its pixels; an animated one only to its first
    frame, whose chunks are those before its pixels: seeking to the last frame decodes them all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = _opened(raw, field, max_pixels, None)
        if image.format != "PNG":
            return {}
        if getattr(image, "is_animated", False):
            return {str(k): str(v) for k, v in image.info.items() if isinstance(v, str)}
        _decode(image, field, max_pixels)
        return {str(k): str(v) for k, v in image.text.items()}


def _too_large(field: str, size: tuple[int, int] | None, max_pixels: int) -> ImageTooLarge:
    what = f"{size[0]}x{size[1]} pixels" if size else "far too many pixels"
    message = f"The image has {what}; this server decodes at most {max_pixels} (MAX_INPUT_PIXELS)."
    return ImageTooLarge(f"{field}: {message}", fields={field: [message]})


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency flattened onto white."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat.alpha_composite(rgba)
    return flat.convert("RGB")


def to_mask(image: Image.Image, *, alpha_marks_edit: bool = False) -> Image.Image:
    """An L mask, white where the image is repainted.

    Ours (A1111's convention): white repaints, black keeps; a mask with transparency (a brush
    painted on a clear layer) repaints where it is opaque. ``alpha_marks_edit`` (OpenAI's
    convention): fully transparent pixels mark the area to edit."""
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha_marks_edit:
            return alpha.point(lambda a: 255 if a == 0 else 0)
        if alpha.getextrema() != (255, 255):
            return alpha
    if alpha_marks_edit:
        raise ValidationFailed(
            "mask: the mask has no transparency: its fully transparent pixels mark the area to edit",
            fields={"mask": ["No transparent pixels: make the area to edit transparent (alpha 0)."]},
        )
    return image.convert("L")


def check_mask(mask: Image.Image, field: str = "mask") -> None:
    if mask.getextrema()[1] == 0:
        raise _invalid(field, "The mask is empty (all black): paint the area to repaint white.")


def fit_size(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The input's size scaled into the limits, each side a multiple of 8: down when too large,
    up (keeping its shape, as a larger input keeps it) when a side is under ``MIN_SIZE``: 56x64
    runs at 64x72, not stretched to 64x64. Only a shape the limits cannot hold is stretched."""
    scale = min(1.0, max_width / width, max_height / height)
    scale = max(scale, MIN_SIZE / min(width, height))
    return _round8(width * scale, max_width), _round8(height * scale, max_height)


def other_side(given: int, given_was_width: bool, size: tuple[int, int], limit: int) -> int:
    """With only one side given, the other keeps the input's aspect ratio."""
    width, height = size
    ratio = height / width if given_was_width else width / height
    return _round8(given * ratio, limit)


def _round8(value: float, limit: int) -> int:
    return max(MIN_SIZE, min(limit // 8 * 8, int(math.floor(value / 8 + 0.5)) * 8))


def resize(image: Image.Image, size: tuple[int, int], mode: int) -> Image.Image:
    """A1111's ``resize_mode``: 0 stretch, 1 crop (fill the size, cut the overflow), 2 fill
    (fit inside, the gaps filled by stretching the edges)."""
    if image.size == size:
        return image
    if mode == 0:
        return image.resize(size, Image.Resampling.LANCZOS)
    if mode == 1:
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    return _resize_and_fill(image, size)


def _resize_and_fill(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    width, height = size
    scale = min(width / image.width, height / image.height)
    inner = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    canvas = Image.new(image.mode, size)
    left, top = (width - inner.width) // 2, (height - inner.height) // 2
    canvas.paste(inner, (left, top))
    if top > 0:  # stretch the first and last rows over the gaps
        canvas.paste(inner.crop((0, 0, inner.width, 1)).resize((inner.width, top)), (left, 0))
        bottom = height - top - inner.height
        canvas.paste(inner.crop((0, inner.height - 1, inner.width, inner.height)).resize((inner.width, bottom)), (left, top + inner.height))
    if left > 0:  # and the first and last columns
        canvas.paste(inner.crop((0, 0, 1, inner.height)).resize((left, inner.height)), (0, top))
        right = width - left - inner.width
        canvas.paste(inner.crop((inner.width - 1, 0, inner.width, inner.height)).resize((right, inner.height)), (left + inner.width, top))
    return canvas
