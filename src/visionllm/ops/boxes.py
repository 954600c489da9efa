"""Pure numpy functions on axis-aligned boxes.

Boxes are float arrays of shape (N, 4) in pixels, in one of two layouts, named in every signature:

* ``xyxy``: (x1, y1, x2, y2), the top-left and bottom-right corners;
* ``xywh``: (x, y, w, h), the top-left corner and the size (the COCO layout).

Coordinates are continuous: a box covers the region [x1, x2) x [y1, y2), so its area is
(x2 - x1) * (y2 - y1), with no "+1" of the old pixel-inclusive convention. That is the convention
pycocotools uses for box IoU, so the numbers here agree with COCOeval's.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["box_area", "box_iou", "clip_boxes", "nms", "xywh_to_xyxy", "xyxy_to_xywh"]


def _as_boxes(boxes: ArrayLike, name: str) -> NDArray[np.float64]:
    """Returns ``boxes`` as a float64 array of shape (N, 4); a single box of shape (4,) becomes (1, 4)."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None, :]
    if array.ndim == 1 and array.shape[0] == 0:
        array = array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {array.shape}")
    return array


def xywh_to_xyxy(boxes_xywh: ArrayLike) -> NDArray[np.float64]:
    """Converts boxes from (x, y, w, h) to (x1, y1, x2, y2).

    Args:
        boxes_xywh: Boxes of shape (N, 4) (or one box of shape (4,)), in pixels.

    Returns:
        Boxes of shape (N, 4), in pixels, float64.
    """
    boxes = _as_boxes(boxes_xywh, "boxes_xywh")
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def xyxy_to_xywh(boxes_xyxy: ArrayLike) -> NDArray[np.float64]:
    """Converts boxes from (x1, y1, x2, y2) to (x, y, w, h).

    Args:
        boxes_xyxy: Boxes of shape (N, 4) (or one box of shape (4,)), in pixels.

    Returns:
        Boxes of shape (N, 4), in pixels, float64. A box with x2 < x1 gets a negative width: this
        function converts, it does not repair.
    """
    boxes = _as_boxes(boxes_xyxy, "boxes_xyxy")
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def box_area(boxes_xyxy: ArrayLike) -> NDArray[np.float64]:
    """Area of each box.

    Args:
        boxes_xyxy: Boxes of shape (N, 4) (or one box of shape (4,)), in pixels.

    Returns:
        Areas of shape (N,), in square pixels. Degenerate boxes (x2 <= x1 or y2 <= y1) have area 0.
    """
    boxes = _as_boxes(boxes_xyxy, "boxes_xyxy")
    widths = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None)
    heights = np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    return widths * heights


def box_iou(a_xyxy: ArrayLike, b_xyxy: ArrayLike) -> NDArray[np.float64]:
    """Pairwise intersection over union of two sets of boxes.

    Args:
        a_xyxy: Boxes of shape (N, 4) (or one box of shape (4,)), in pixels.
        b_xyxy: Boxes of shape (M, 4) (or one box of shape (4,)), in pixels.

    Returns:
        IoU matrix of shape (N, M), values in [0, 1]. A pair whose union is empty (two degenerate
        boxes) has IoU 0.
    """
    a = _as_boxes(a_xyxy, "a_xyxy")
    b = _as_boxes(b_xyxy, "b_xyxy")
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    size = np.clip(bottom_right - top_left, 0.0, None)
    intersection = size[..., 0] * size[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - intersection
    iou = np.zeros_like(intersection)
    np.divide(intersection, union, out=iou, where=union > 0)
    return iou


def clip_boxes(boxes_xyxy: ArrayLike, width: float, height: float) -> NDArray[np.float64]:
    """Clips boxes to the image rectangle [0, width] x [0, height].

    Args:
        boxes_xyxy: Boxes of shape (N, 4) (or one box of shape (4,)), in pixels.
        width: Image width, in pixels.
        height: Image height, in pixels.

    Returns:
        Clipped boxes of shape (N, 4), in pixels, float64. A box entirely outside the image becomes
        degenerate (zero area); it is not removed.
    """
    if width < 0 or height < 0:
        raise ValueError(f"width and height must be >= 0, got {width} x {height}")
    boxes = _as_boxes(boxes_xyxy, "boxes_xyxy")
    upper = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(boxes, 0.0, upper)


def nms(
    boxes_xyxy: ArrayLike, scores: ArrayLike, iou_threshold: float, labels: ArrayLike | None = None
) -> NDArray[np.int64]:
    """Greedy non-maximum suppression: keep the best box, drop those overlapping it more than the threshold.

    Args:
        boxes_xyxy: Boxes of shape (N, 4), in pixels.
        scores: (N,) scores; higher is better (ties keep the earlier box).
        iou_threshold: a box is dropped when its IoU with a kept, better box is > this.
        labels: optional (N,) labels; boxes only suppress boxes of the same label (class-wise NMS).

    Returns:
        Indices of the kept boxes, best score first.
    """
    boxes = _as_boxes(boxes_xyxy, "boxes_xyxy")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    same = np.ones((len(boxes), len(boxes)), dtype=bool)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(boxes):
            raise ValueError(f"nms: {len(boxes)} boxes but {len(labels)} labels")
        same = labels[:, None] == labels[None, :]
    overlaps = (box_iou(boxes, boxes) > iou_threshold) & same
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]
    return np.asarray(keep, dtype=np.int64)
