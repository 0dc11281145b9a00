"""Inpainting around the pipeline: the mask's blur, A1111's "only masked" crop, the fill of the
masked area before encoding, and the overlay that gives every unmasked pixel back unchanged.

The pipeline runs on ``pipeline_image``/``pipeline_mask`` at the job's size; :meth:`Inpainting.finish`
turns what it made into the output: for ``inpaint_area="masked"`` the repainted crop is scaled
back and pasted into place; in both areas the original is laid over everything the (blurred) mask
leaves out, so those pixels never pass through the VAE. Plain PIL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageFilter

from ..params import GenerationParams


def blurred(mask: Image.Image, radius: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def crop_box(mask: Image.Image, padding: int, aspect: float) -> tuple[int, int, int, int]:
    """The mask's bounding box, padded, then widened to the output's aspect ratio (``w / h``)
    and kept inside the image."""
    left, top, right, bottom = mask.getbbox() or (0, 0, mask.width, mask.height)
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(mask.width, right + padding), min(mask.height, bottom + padding)
    width, height = right - left, bottom - top
    if width / height < aspect:
        width = min(mask.width, round(height * aspect))
    else:
        height = min(mask.height, round(width / aspect))
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    left = int(min(max(0, round(centre_x - width / 2)), mask.width - width))
    top = int(min(max(0, round(centre_y - height / 2)), mask.height - height))
    return left, top, left + width, top + height


def filled(image: Image.Image, mask: Image.Image, fill: int, seed: int) -> Image.Image:
    """A1111's ``inpainting_fill`` on the masked area before it is encoded: 0 its surroundings
    blurred in, 1 the original, 2 noise, 3 flat grey (nothing)."""
    if fill == 1:
        return image
    if fill == 0:
        source = image.filter(ImageFilter.GaussianBlur(max(image.size) // 8 or 1))
    elif fill == 2:
        rng = random.Random(seed)
        source = Image.frombytes("RGB", image.size, rng.randbytes(image.width * image.height * 3))
    else:
        source = Image.new("RGB", image.size, (127, 127, 127))
    return Image.composite(source, image, mask.point(lambda v: 255 if v else 0))


@dataclass
class Inpainting:
    """One inpainting job's images, before and after the pipeline."""

    original: Image.Image  # the input at the output's size (RGB)
    mask: Image.Image  # blurred (L), at the output's size
    box: tuple[int, int, int, int] | None  # the crop repainted, for inpaint_area="masked"
    size: tuple[int, int]  # what the pipeline runs at
    pipeline_image: Image.Image
    pipeline_mask: Image.Image

    @classmethod
    def prepare(cls, params: GenerationParams, image: Image.Image, mask: Image.Image) -> Inpainting:
        size = (params.width, params.height)
        options = params.inpaint
        mask = blurred(mask.resize(image.size) if mask.size != image.size else mask, options.mask_blur)
        source = filled(image, mask, options.fill, params.seed)
        box = None
        if options.area == "masked":
            box = crop_box(mask, options.padding, params.width / params.height)
            source, crop_mask = source.crop(box), mask.crop(box)
            return cls(image, mask, box, size, source.resize(size, Image.Resampling.LANCZOS), crop_mask.resize(size))
        return cls(image, mask, box, size, source.resize(size), mask.resize(size))

    def fit(self, control: Image.Image) -> Image.Image:
        """A control map at the job's size as the pipeline sees the image: the "only masked" crop too."""
        if self.box is None:
            return control if control.size == self.size else control.resize(self.size)
        return control.crop(self.box).resize(self.size, Image.Resampling.LANCZOS)

    def finish(self, generated: Image.Image) -> Image.Image:
        """The output: the repainted pixels where the mask is, the original everywhere else."""
        if self.box is None:
            repainted = generated.resize(self.original.size) if generated.size != self.original.size else generated
        else:
            left, top, right, bottom = self.box
            repainted = self.original.copy()
            repainted.paste(generated.resize((right - left, bottom - top), Image.Resampling.LANCZOS), (left, top))
        return Image.composite(repainted.convert("RGB"), self.original, self.mask)
