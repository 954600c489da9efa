"""What every model version checks and prepares the same way: user text, and images as they are displayed."""

from __future__ import annotations

from PIL import ExifTags, Image, ImageOps


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
