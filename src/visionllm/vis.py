"""Pictures of results: boxes, polygons, masks, keypoints with skeletons, labels, contact sheets.

Inputs are pixel coordinates of the original image; drawing can upscale the picture first
(`scale`) so that labels stay readable on small images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from visionllm.formats.keypoints import COCO_SKELETON
from visionllm.formats.results import Detections, SegmentationMap, TextAnswer

# A fixed, high-contrast palette; a class keeps its colour across pictures.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
)  # fmt: skip


def class_color(name: str, class_names: Sequence[str] | None = None) -> tuple[int, int, int]:
    """A stable colour for a class: by its index in `class_names`, else by a hash of the name."""
    if class_names is not None and name in class_names:
        return PALETTE[list(class_names).index(name) % len(PALETTE)]
    return PALETTE[sum(name.encode()) % len(PALETTE)]


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {array.dtype}")
    return Image.fromarray(array).convert("RGB")


def draw_detections(
    image: Image.Image | np.ndarray,
    detections: Detections,
    skeleton: Sequence[tuple[int, int]] = (),
    scale: float = 1.0,
    show_scores: bool = True,
    class_names: Sequence[str] | None = None,
) -> Image.Image:
    """Draw detections over an image.

    Args:
        image: the input image (PIL or (H, W, 3) uint8).
        detections: boxes, and polygons / masks / keypoints when present, in the image's pixels.
        skeleton: 1-based keypoint pairs to connect (COCO style).
        scale: upscale factor applied to the picture before drawing.
        show_scores: add the score to each label.
        class_names: the class set, for stable colours.

    Returns:
        A new RGB image of size (W * scale, H * scale).
    """
    picture = to_pil(image)
    if scale != 1.0:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    if detections.masks is not None and len(detections):
        overlay = np.asarray(picture).astype(np.float32)
        for i in range(len(detections)):
            mask = np.asarray(Image.fromarray(detections.masks[i]).resize(picture.size, Image.NEAREST))
            color = np.asarray(class_color(detections.class_names[i], class_names), dtype=np.float32)
            overlay[mask] = 0.5 * overlay[mask] + 0.5 * color
        picture = Image.fromarray(overlay.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    width = max(1, round(scale))
    for i in range(len(detections)):
        name = detections.class_names[i]
        color = class_color(name, class_names)
        x1, y1, x2, y2 = (detections.boxes_xyxy_px[i] * scale).tolist()
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        if detections.polygons_xy_px is not None:
            points = [tuple(p) for p in (detections.polygons_xy_px[i] * scale).tolist()]
            draw.line([*points, points[0]], fill=color, width=width)
            if len(points) <= 64:  # a model's N points; traced ground truth has too many to mark
                for x, y in points:
                    draw.ellipse([x - width, y - width, x + width, y + width], fill=color)
        if detections.keypoints_xyv_px is not None:
            _draw_keypoints(draw, detections.keypoints_xyv_px[i], skeleton, scale, color, width)
        label = f"{name} {detections.scores[i]:.2f}" if show_scores else name
        _draw_label(draw, (x1, y1), label, color, font)
    return picture


def draw_segmentation(
    image: Image.Image | np.ndarray, segmentation: SegmentationMap, scale: float = 1.0
) -> Image.Image:
    """A semantic map over the image: each class's pixels tinted with its colour, its name in the legend below."""
    picture = to_pil(image)
    if scale != 1.0:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    labels = np.asarray(Image.fromarray(segmentation.labels.astype(np.int32)).resize(picture.size, Image.NEAREST))
    overlay = np.asarray(picture).astype(np.float32)
    shown = []
    for index, name in enumerate(segmentation.class_names, start=1):
        where = labels == index
        if where.any():
            color = np.asarray(class_color(name, segmentation.class_names), dtype=np.float32)
            overlay[where] = 0.45 * overlay[where] + 0.55 * color
            shown.append(name)
    tinted = Image.fromarray(overlay.astype(np.uint8))
    return draw_text_below(tinted, ["classes found: " + (", ".join(shown) or "(none)")])


def _draw_keypoints(
    draw: ImageDraw.ImageDraw,
    keypoints_xyv: np.ndarray,
    skeleton: Sequence[tuple[int, int]],
    scale: float,
    color: tuple[int, int, int],
    width: int,
) -> None:
    points = keypoints_xyv[:, :2] * scale
    shown = keypoints_xyv[:, 2] > 0
    if max((max(pair) for pair in skeleton), default=0) > len(shown):
        skeleton = ()  # another skeleton's points (a star's tips): points without bones
    for a, b in skeleton:
        if shown[a - 1] and shown[b - 1]:
            draw.line([tuple(points[a - 1]), tuple(points[b - 1])], fill=color, width=width)
    r = 1.5 * width + 1
    for (x, y), on in zip(points.tolist(), shown.tolist(), strict=True):
        if on:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255), outline=color)


def _draw_label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color, font) -> None:
    x, y = xy
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    h = bottom - top + 2
    y = y - h if y - h >= 0 else y
    draw.rectangle([x, y, x + right - left + 3, y + h], fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x + 1, y), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)


def draw_text_below(image: Image.Image, lines: Sequence[str], width_chars: int | None = None) -> Image.Image:
    """The image with lines of text in a white band under it (captions, answers)."""
    font = ImageFont.load_default()
    wrapped: list[str] = []
    limit = width_chars or max(10, image.width // 6)
    for line in lines:
        words, current = line.split(), ""
        for word in words:
            if current and len(current) + 1 + len(word) > limit:
                wrapped.append(current)
                current = word
            else:
                current = f"{current} {word}".strip()
        wrapped.append(current)
    line_height = 12
    out = Image.new("RGB", (image.width, image.height + line_height * len(wrapped) + 4), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(wrapped):
        draw.text((3, image.height + 2 + k * line_height), line, fill=(0, 0, 0), font=font)
    return out


def draw_result(
    image: Image.Image, prediction: Detections | TextAnswer | SegmentationMap, min_side: int = 512
) -> Image.Image:
    """The picture of one answer: detections drawn over the image, or a text answer under it.

    Args:
        image: the input image.
        prediction: the typed answer, in the image's pixels.
        min_side: the picture is upscaled (never shrunk) so that its longer side is at least this, for readable
            labels on small images.
    """
    image = to_pil(image)
    scale = max(1.0, min_side / max(image.size))
    if isinstance(prediction, Detections):
        return draw_detections(image, prediction, skeleton=COCO_SKELETON, scale=scale)
    if isinstance(prediction, SegmentationMap):
        return draw_segmentation(image, prediction, scale=scale)
    if prediction.routed:  # a v2 reply: what its routing tokens found, under the reply
        found = merge_detections(list(prediction.routed.values()), image.size)
        return draw_text_below(draw_detections(image, found, skeleton=COCO_SKELETON, scale=scale), [prediction.text])
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    return draw_text_below(resized, [prediction.text])


def merge_detections(parts: Sequence[Detections], size_wh: tuple[int, int]) -> Detections:
    """Several detection results of one image as one (to draw them together): masks and keypoints where any part
    has them, empty (unmarked, invisible) for the others."""
    width, height = size_wh

    def joined(field: str, blank: Callable[[Detections], np.ndarray]) -> np.ndarray | None:
        if all(getattr(p, field) is None for p in parts):
            return None
        return np.concatenate([getattr(p, field) if getattr(p, field) is not None else blank(p) for p in parts])

    points = max((p.keypoints_xyv_px.shape[1] for p in parts if p.keypoints_xyv_px is not None), default=0)
    keypoints = [
        p.keypoints_xyv_px
        if p.keypoints_xyv_px is None or p.keypoints_xyv_px.shape[1] == points
        else np.pad(p.keypoints_xyv_px, ((0, 0), (0, points - p.keypoints_xyv_px.shape[1]), (0, 0)))
        for p in parts
    ]
    parts = [replace(p, keypoints_xyv_px=k) for p, k in zip(parts, keypoints, strict=True)]
    return Detections(
        boxes_xyxy_px=np.concatenate([p.boxes_xyxy_px.reshape(-1, 4) for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
        class_names=tuple(name for p in parts for name in p.class_names),
        keypoints_xyv_px=joined("keypoints_xyv_px", lambda p: np.zeros((len(p), points, 3))),
        masks=joined("masks", lambda p: np.zeros((len(p), height, width), bool)),
    )


def contact_sheet(tiles: Sequence[Image.Image], columns: int = 4, gap: int = 4) -> Image.Image:
    """Tiles in a grid on a white sheet, each cell as large as the largest tile."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    cell_w = max(t.width for t in tiles)
    cell_h = max(t.height for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (cell_w + gap) + gap, rows * (cell_h + gap) + gap), (255, 255, 255))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet.paste(tile, (gap + c * (cell_w + gap), gap + r * (cell_h + gap)))
    return sheet
