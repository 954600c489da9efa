"""What every model version checks and prepares the same way: user text, and images as they are displayed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch import Tensor


class ProcessorError(ValueError):
    """An input the processor cannot turn into model inputs (bad instruction, bad image)."""


def check_text(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate such as "\\ud800", which no tokenizer can encode).

    Raises:
        ProcessorError: naming `what` and where the bad character is.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = ascii(text[error.start : error.end])
        raise ProcessorError(
            f"{what} is not valid Unicode: it holds a lone surrogate {bad} at character {error.start}; "
            "send UTF-8 text (pair surrogates or drop the character)"
        ) from None


def upright(image: Image.Image) -> Image.Image:
    """The image as viewers display it: its EXIF orientation applied (unchanged when it has none, or one that
    cannot be read)."""
    try:
        if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
            return image  # nothing to turn: no copy (every image of training and serving passes here)
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF: keep the stored orientation rather than refuse the image
        return image


@dataclass
class ImageInput:
    """A preprocessed image: pixels (3, S, S) and the original size (W, H) in pixels."""

    pixels: Tensor
    size_wh: tuple[int, int]


def normalise_image(image: Image.Image, size: int, mean: Tensor, std: Tensor) -> ImageInput:
    """Upright as displayed (EXIF orientation applied), RGB, resized to size x size (bilinear), in [0, 1], normalised
    by mean and std (3, 1, 1). The original size is the displayed one, so results map onto the image as seen."""
    rgb = upright(image).convert("RGB")
    resized = rgb.resize((size, size), Image.BILINEAR) if rgb.size != (size, size) else rgb
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ImageInput((pixels - mean) / std, rgb.size)
