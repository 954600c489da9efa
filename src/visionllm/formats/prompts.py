"""Visual prompts as users give them: points, boxes, scribbles, polygons and masks, in pixels of their image, and
each drawn as the binary mask of the image it marks (`prompt_mask`). v2's region encoder reads those masks; the
server and the evaluation build prompts without knowing a model version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PROMPT_KINDS = ("point", "box", "scribble", "polygon", "mask")


class RegionError(ValueError):
    """A visual prompt that does not mark any part of its image."""


@dataclass(frozen=True)
class RegionPrompt:
    """One visual prompt, in pixels of its image.

    Attributes:
        kind: "point" ([x, y]), "box" ([x1, y1, x2, y2]), "scribble" (a polyline, [[x, y], ...]), "polygon"
            ([[x, y], ...], filled) or "mask" (an (H, W) array, nonzero inside).
        data: the coordinates or the mask.
    """

    kind: str
    data: Sequence | np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise RegionError(f"unknown prompt kind {self.kind!r}; kinds: {', '.join(PROMPT_KINDS)}")


def prompt_mask(prompt: RegionPrompt, size_wh: tuple[int, int]) -> np.ndarray:
    """The prompt drawn as a boolean (H, W) mask of an image of `size_wh`.

    A point marks a disc of radius max(2, 2% of the shorter side); a scribble is drawn as a line of that width.

    Raises:
        RegionError: malformed coordinates, a mask of another size, or a prompt that marks nothing inside the image.
    """
    w, h = size_wh
    if prompt.kind == "mask":
        mask = np.asarray(prompt.data)
        if mask.shape != (h, w):
            raise RegionError(f"a mask prompt must be {h}x{w} (the image's height x width), got {mask.shape}")
        mask = mask != 0
    else:
        canvas = Image.new("1", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        radius = max(2.0, 0.02 * min(w, h))
        points = np.asarray(prompt.data, dtype=np.float64)
        if not np.isfinite(points).all():
            raise RegionError(f"the {prompt.kind} prompt has coordinates that are not finite numbers")
        if prompt.kind == "point":
            if points.shape != (2,):
                raise RegionError(f"a point prompt is [x, y], got shape {points.shape}")
            x, y = points
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=1)
        elif prompt.kind == "box":
            if points.shape != (4,) or points[2] < points[0] or points[3] < points[1]:
                raise RegionError(f"a box prompt is [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2, got {points.tolist()}")
            x1, y1, x2, y2 = points
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            if 0 <= cx < w and 0 <= cy < h:  # a box thinner than a pixel still marks the pixel it lies in
                draw.point((int(cx), int(cy)), fill=1)
            if x2 - x1 >= 1 and y2 - y1 >= 1:  # the pixels whose centres lie inside [x1, x2) x [y1, y2)
                draw.rectangle(
                    [np.ceil(x1 - 0.5), np.ceil(y1 - 0.5), np.ceil(x2 - 0.5) - 1, np.ceil(y2 - 0.5) - 1], fill=1
                )
        else:
            if points.ndim != 2 or points.shape[1] != 2 or len(points) < (2 if prompt.kind == "scribble" else 3):
                least = 2 if prompt.kind == "scribble" else 3
                raise RegionError(f"a {prompt.kind} prompt is a list of at least {least} [x, y] points")
            xy = [tuple(p) for p in points.tolist()]
            if prompt.kind == "scribble":
                draw.line(xy, fill=1, width=max(1, round(2 * radius)))
            else:
                draw.polygon(xy, fill=1)
        mask = np.asarray(canvas, dtype=bool)
    if not mask.any():
        raise RegionError(f"the {prompt.kind} prompt marks no pixel of the {w}x{h} image: it lies outside it")
    return mask
