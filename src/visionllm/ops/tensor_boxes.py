"""Box ops on torch tensors (differentiable), for losses and matching.

Boxes are (..., 4): `cxcywh` is (centre x, centre y, width, height), `xyxy` is corners; the unit is
whatever the caller uses (the models use [0, 1] image fractions).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes_xyxy: Tensor) -> Tensor:
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]).clamp(min=0) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1]).clamp(
        min=0
    )


def pairwise_iou(a_xyxy: Tensor, b_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """IoU (N, M) and union (N, M) of two sets of boxes."""
    lt = torch.maximum(a_xyxy[:, None, :2], b_xyxy[None, :, :2])
    rb = torch.minimum(a_xyxy[:, None, 2:], b_xyxy[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a_xyxy)[:, None] + box_area(b_xyxy)[None, :] - inter
    return inter / union.clamp(min=1e-9), union


def generalized_iou(a_xyxy: Tensor, b_xyxy: Tensor) -> Tensor:
    """Pairwise generalized IoU (N, M), in [-1, 1]."""
    iou, union = pairwise_iou(a_xyxy, b_xyxy)
    lt = torch.minimum(a_xyxy[:, None, :2], b_xyxy[None, :, :2])
    rb = torch.maximum(a_xyxy[:, None, 2:], b_xyxy[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def elementwise_generalized_iou(a_xyxy: Tensor, b_xyxy: Tensor) -> Tensor:
    """Generalized IoU of matched pairs (N,) of boxes (N, 4)."""
    lt = torch.maximum(a_xyxy[:, :2], b_xyxy[:, :2])
    rb = torch.minimum(a_xyxy[:, 2:], b_xyxy[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a_xyxy) + box_area(b_xyxy) - inter
    hull = (
        (torch.maximum(a_xyxy[:, 2:], b_xyxy[:, 2:]) - torch.minimum(a_xyxy[:, :2], b_xyxy[:, :2]))
        .clamp(min=0)
        .prod(-1)
    )
    return inter / union.clamp(min=1e-9) - (hull - union) / hull.clamp(min=1e-9)


def fast_nms_keep(boxes_xyxy: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Which (box, class) scores survive class-wise duplicate suppression, in one vectorised pass.

    A box's score for a class is suppressed when another box of the same image overlaps it by more than
    `iou_threshold` and scores higher for that class (ties: the lower index wins). Unlike greedy NMS, a
    suppressed box still suppresses others ("Fast NMS", YOLACT), which only differs in chains of overlaps.

    Args:
        boxes_xyxy: (B, N, 4) boxes.
        scores: (B, N, C) scores per class.
        iou_threshold: overlap above which the lower score is suppressed.

    Returns:
        (B, N, C) bool, True where the score is kept.
    """
    n = boxes_xyxy.shape[1]
    iou = torch.stack([pairwise_iou(b, b)[0] for b in boxes_xyxy.float()]) if n else boxes_xyxy.new_zeros(0, 0, 0)
    overlaps = (iou > iou_threshold) & ~torch.eye(n, dtype=torch.bool, device=boxes_xyxy.device)  # (B, N, N)
    index = torch.arange(n, device=boxes_xyxy.device)
    s_i, s_j = scores[:, :, None, :], scores[:, None, :, :]  # (B, N, 1, C) against (B, 1, N, C)
    beats = (s_i > s_j) | ((s_i == s_j) & (index[:, None] < index[None, :])[None, :, :, None])
    return ~(overlaps[..., None] & beats).any(1)
