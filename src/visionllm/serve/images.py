"""Images from requests: data URLs, bare base64 and (when allowed) local files, checked against limits.

Every failure is a `RequestError` with a 4xx status; nothing here decodes more pixels than the limit allows
(a small file that claims a huge canvas, a "decompression bomb", is refused from its header alone).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from visionllm.models.common.inputs import upright
from visionllm.serve.errors import RequestError

# Decoders PIL may try; anything else is refused before a decoder runs.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


@dataclass(frozen=True)
class ImageLimits:
    """What an image in a request may be.

    Attributes:
        max_bytes: encoded size, in bytes.
        max_pixels: width x height.
        image_dirs: folders whose files a request may name by path (none: paths are refused).
    """

    max_bytes: int = 10 * 2**20
    max_pixels: int = 4096 * 4096
    image_dirs: Sequence[Path] = ()


def load_image(reference: str, limits: ImageLimits, param: str = "image") -> Image.Image:
    """Decode the image a request refers to.

    Args:
        reference: a `data:image/...;base64,...` URL, bare base64, a `file://` URL or a local path (the last two
            only inside `limits.image_dirs`).
        limits: size limits and allowed folders.
        param: the request field, for error messages.

    Returns:
        The decoded RGB image.

    Raises:
        RequestError: 400 bad encoding or refused path, 413 too large, 415 not an image format we read.
    """
    if not isinstance(reference, str) or not reference.strip():
        raise RequestError(400, "the image is empty: send a data URL such as data:image/png;base64,...", param)
    reference = reference.strip()
    if reference.startswith(("http://", "https://")):
        raise RequestError(
            400,
            "remote image URLs are not fetched: send the image inline as a data URL (data:image/png;base64,...)",
            param,
            "remote_url",
        )
    match = _DATA_URL.match(reference)
    if match:
        if not match.group("b64"):
            raise RequestError(400, "the data URL is not base64-encoded: use data:image/...;base64,<data>", param)
        data = _b64decode(reference[match.end() :], limits, param)
    elif reference.startswith("file://") or reference.startswith("/") or reference.startswith("."):
        data = _read_local(reference.removeprefix("file://"), limits, param)
    else:
        data = _b64decode(reference, limits, param)
    return decode_image_bytes(data, limits, param)


def decode_image_bytes(data: bytes, limits: ImageLimits, param: str = "image") -> Image.Image:
    """Decode encoded image bytes within the limits (see `load_image`)."""
    if len(data) > limits.max_bytes:
        raise RequestError(
            413, f"the image is {len(data)} bytes; the limit is {limits.max_bytes} bytes", param, "image_too_large"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = image.size
            if width * height > limits.max_pixels:
                raise RequestError(
                    413,
                    f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} "
                    "pixels: send a smaller image",
                    param,
                    "too_many_pixels",
                )
            image.load()
            image = upright(image)  # as displayed: boxes and image_size match what users see
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise RequestError(413, f"the image has too many pixels: {error}", param, "too_many_pixels") from None
    except UnidentifiedImageError:
        raise RequestError(
            415, f"not an image in a format we read; send one of {', '.join(IMAGE_FORMATS)}", param, "bad_image"
        ) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise RequestError(400, f"the image could not be decoded: {error}", param, "bad_image") from None
    return image.convert("RGB")


def _b64decode(text: str, limits: ImageLimits, param: str) -> bytes:
    # base64 is 4/3 of the bytes: refuse early instead of decoding a huge string.
    if len(text) > limits.max_bytes * 4 // 3 + 8:
        raise RequestError(413, f"the image is over the limit of {limits.max_bytes} bytes", param, "image_too_large")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            400,
            "the image is not valid base64: send data:image/png;base64,<data> with standard base64",
            param,
            "bad_base64",
        ) from None


def _read_local(path_text: str, limits: ImageLimits, param: str) -> bytes:
    if not limits.image_dirs:
        raise RequestError(
            400,
            "local image paths are not allowed on this server (start it with --image-dir DIR to allow a folder); "
            "send a data URL instead",
            param,
            "path_not_allowed",
        )
    path = Path(path_text).resolve()
    if not any(path.is_relative_to(Path(d).resolve()) for d in limits.image_dirs):
        raise RequestError(403, f"{path_text} is outside the folders this server reads images from", param)
    if not path.is_file():
        raise RequestError(400, f"no image file at {path_text}", param, "not_found")
    if path.stat().st_size > limits.max_bytes:
        raise RequestError(413, f"{path_text} is over the limit of {limits.max_bytes} bytes", param, "image_too_large")
    return path.read_bytes()


def to_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    """Encode an image as a data URL (for responses and the page)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
