"""The DETR set loss for class-agnostic (or binary) detection heads: sigmoid focal + L1 + GIoU,
after Hungarian matching (Deformable DETR's costs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from visionllm.models.common.matcher import hungarian_match
from visionllm.ops.tensor_boxes import cxcywh_to_xyxy, elementwise_generalized_iou, generalized_iou


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed focal loss of logits against 0/1 targets of the same shape."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum()


def detection_set_loss(
    logits: Tensor,
    boxes_cxcywh: Tensor,
    targets_cxcywh: Sequence[Tensor],
    class_weight: float,
    l1_weight: float,
    giou_weight: float,
    alpha: float = 0.25,
) -> Tensor:
    """Matched set loss of a binary detector.

    Args:
        logits: (B, Q) objectness logits.
        boxes_cxcywh: (B, Q, 4) predicted boxes in [0, 1].
        targets_cxcywh: B tensors (T_b, 4) of target boxes in [0, 1].
        class_weight, l1_weight, giou_weight: loss weights, also used as matching costs.

    Returns:
        The weighted loss, normalised by the number of targets in the batch.
    """
    num_targets = max(1, sum(len(t) for t in targets_cxcywh))
    labels = torch.zeros_like(logits)
    l1 = logits.new_zeros(())
    giou = logits.new_zeros(())
    with torch.no_grad():
        prob = logits.float().sigmoid()
    for b, target in enumerate(targets_cxcywh):
        if len(target) == 0:
            continue
        target = target.to(boxes_cxcywh.dtype)
        p = prob[b][:, None]
        # Deformable DETR's focal matching cost.
        positive = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log()
        negative = 0.75 * p**2 * -(1 - p + 1e-8).log()
        with torch.no_grad():
            cost = (
                class_weight * (positive - negative)
                + l1_weight * torch.cdist(boxes_cxcywh[b].float(), target.float(), p=1)
                - giou_weight * generalized_iou(cxcywh_to_xyxy(boxes_cxcywh[b].float()), cxcywh_to_xyxy(target.float()))
            )
        rows, cols = hungarian_match(cost)
        rows, cols = rows.to(logits.device), cols.to(logits.device)
        labels[b, rows] = 1.0
        matched, wanted = boxes_cxcywh[b, rows], target[cols]
        l1 = l1 + F.l1_loss(matched, wanted, reduction="sum")
        giou = giou + (1 - elementwise_generalized_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(wanted))).sum()
    focal = sigmoid_focal_loss(logits.float(), labels.float(), alpha) / num_targets
    return class_weight * focal + l1_weight * l1 / num_targets + giou_weight * giou / num_targets
