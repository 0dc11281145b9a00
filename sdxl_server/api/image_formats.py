"""Re-encoding a stored PNG as JPEG or WebP, for OpenAI's ``output_format`` and ``output_compression``.

The server stores PNGs (with their ``parameters`` text); a client that asks for ``jpeg`` or
``webp`` gets that format, at the quality ``output_compression`` (0 to 100, OpenAI's default 100)
gives, the generation parameters kept in the file's EXIF ``UserComment`` as A1111 does.
Never imports torch.
"""

from __future__ import annotations

import io

from PIL import Image

FORMATS = ("png", "jpeg", "webp")
_EXIF_USER_COMMENT = 0x9286


def reencode(png: bytes, output_format: str, compression: int) -> bytes:
    """``png`` as ``output_format`` (one of :data:`FORMATS`) at quality ``compression``."""
    if output_format == "png":
        return png
    with Image.open(io.BytesIO(png)) as image:
        parameters = image.text.get("parameters", "") if hasattr(image, "text") else ""
        exif = Image.Exif()
        if parameters:
            exif[_EXIF_USER_COMMENT] = b"UNICODE\x00" + parameters.encode("utf-16-be")
        out = io.BytesIO()
        image.convert("RGB").save(out, format=output_format.upper(), quality=max(1, min(100, compression)), exif=exif)
        return out.getvalue()
