"""Fixtures for the reader tests: the public-layout files and tiny stand-ins for their images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PUBLIC = Path(__file__).resolve().parents[1] / "fixtures" / "public"

COCO_VAL2017_FILE_NAMES = ("000000397133.jpg", "000000037777.jpg", "000000252219.jpg")


@pytest.fixture
def public() -> Path:
    """tests/fixtures/public: annotation files in the public datasets' own layouts."""
    return PUBLIC


@pytest.fixture
def coco_val2017_dir(tmp_path: Path) -> Path:
    """A val2017 image folder holding 8x8 JPGs under the fixture files' names (readers never open them)."""
    image_dir = tmp_path / "val2017"
    image_dir.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for name in COCO_VAL2017_FILE_NAMES:
        Image.fromarray(pixels).save(image_dir / name)
    return image_dir
