import base64
import io

import numpy as np
import pytest
from PIL import Image

from visionllm.serve.errors import RequestError
from visionllm.serve.images import ImageLimits, load_image, to_data_url


def encoded(fmt: str, size=(20, 10), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_data_urls_of_every_supported_format_decode(fmt):
    url = f"data:image/{fmt.lower()};base64," + base64.b64encode(encoded(fmt)).decode()
    image = load_image(url, ImageLimits())
    assert image.size == (20, 10) and image.mode == "RGB"


def test_bare_base64_and_round_trip_through_to_data_url():
    array = np.arange(24 * 16 * 3, dtype=np.uint8).reshape(16, 24, 3)
    url = to_data_url(Image.fromarray(array))
    assert np.array_equal(np.asarray(load_image(url, ImageLimits())), array)
    bare = url.split(",", 1)[1]
    assert np.array_equal(np.asarray(load_image(bare, ImageLimits())), array)


@pytest.mark.parametrize(
    ("reference", "status", "words"),
    [
        ("", 400, "empty"),
        ("data:image/png;base64,@@@not base64@@@", 400, "base64"),
        ("data:image/png,rawbytes", 400, "not base64-encoded"),
        ("https://example.com/cat.png", 400, "remote image URLs are not fetched"),
        ("data:image/png;base64," + base64.b64encode(b"plain text, not an image").decode(), 415, "format"),
        ("data:image/tiff;base64," + base64.b64encode(encoded("TIFF")).decode(), 415, "PNG, JPEG"),
        (
            "data:image/png;base64," + base64.b64encode(encoded("PNG", size=(64, 64))[:-30]).decode(),
            400,
            "could not be decoded",
        ),
        ("/etc/passwd", 400, "not allowed"),
    ],
)
def test_bad_images_are_refused_with_a_clear_status(reference, status, words):
    with pytest.raises(RequestError) as caught:
        load_image(reference, ImageLimits())
    assert caught.value.status == status
    assert words in caught.value.message


def test_byte_and_pixel_limits():
    data = encoded("PNG", size=(300, 200))
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    with pytest.raises(RequestError) as caught:
        load_image(url, ImageLimits(max_bytes=len(data) - 1))
    assert caught.value.status == 413 and "bytes" in caught.value.message
    with pytest.raises(RequestError) as caught:
        load_image(url, ImageLimits(max_pixels=300 * 200 - 1))
    assert caught.value.status == 413 and "300x200" in caught.value.message
    assert load_image(url, ImageLimits(max_bytes=len(data), max_pixels=300 * 200)).size == (300, 200)


def test_a_decompression_bomb_is_refused_from_its_header():
    # A 20000 x 20000 PNG of one colour compresses to a few hundred KB but would take 1.2 GB decoded.
    bomb = encoded("PNG", size=(20000, 20000), mode="1")
    assert len(bomb) < 2**20
    with pytest.raises(RequestError) as caught:
        load_image(base64.b64encode(bomb).decode(), ImageLimits())
    assert caught.value.status == 413 and "pixels" in caught.value.message


def test_local_paths_only_inside_allowed_folders(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(encoded("PNG"))
    (tmp_path / "secret.png").write_bytes(encoded("PNG"))
    limits = ImageLimits(image_dirs=(allowed,))
    assert load_image(str(allowed / "a.png"), limits).size == (20, 10)
    assert load_image(f"file://{allowed / 'a.png'}", limits).size == (20, 10)
    for outside in (str(tmp_path / "secret.png"), str(allowed / ".." / "secret.png")):
        with pytest.raises(RequestError) as caught:
            load_image(outside, limits)
        assert caught.value.status == 403
    with pytest.raises(RequestError) as caught:
        load_image(str(allowed / "missing.png"), limits)
    assert caught.value.status == 400 and "no image file" in caught.value.message


def test_images_are_decoded_upright_as_displayed():
    # A 64 x 32 JPEG stored sideways (EXIF orientation 6): the server sees, and answers for, the 32 x 64 image shown.
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG", exif=exif.tobytes())
    reference = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert load_image(reference, ImageLimits()).size == (32, 64)
