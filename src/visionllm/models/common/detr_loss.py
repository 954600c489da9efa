"""The DETR set loss for detection heads whose classes are per-image (phrases of the instruction):
sigmoid focal over the valid classes + L1 + GIoU, after Hungarian matching (Deformable DETR's costs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from visionllm.models.common.matcher import hungarian_match
from visionllm.ops.tensor_boxes import cxcywh_to_xyxy, elementwise_generalized_iou, generalized_iou
from visionllm.train.distributed import global_count


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss of logits against 0/1 targets of the same shape."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


Matches = tuple[Tensor, Tensor, Tensor]
"""A batch's matches as three (K,) index tensors: image, prediction (query) and target."""


def matched_set_loss(
    logits: Tensor,
    valid: Tensor,
    boxes_cxcywh: Tensor,
    targets_cxcywh: Sequence[Tensor],
    target_classes: Sequence[Tensor],
    class_weight: float,
    l1_weight: float,
    giou_weight: float,
    alpha: float = 0.25,
) -> tuple[Tensor, Matches]:
    """Matched set loss.

    The matching costs of the whole batch are computed at once on targets padded to the longest list (one
    Hungarian assignment per image remains), so the loss costs a few dozen tensor ops, not a few dozen per image.

    Args:
        logits: (B, Q, C) class logits (C: the most classes any image of the batch has).
        valid: (B, C) which classes exist for each image (the rest are left out of the loss).
        boxes_cxcywh: (B, Q, 4) predicted boxes in [0, 1].
        targets_cxcywh: B tensors (T_b, 4) of target boxes in [0, 1].
        target_classes: B tensors (T_b,) of target class indices.
        class_weight, l1_weight, giou_weight: loss weights, also used as matching costs.

    Returns:
        The weighted loss, normalised by the number of targets in the batch (the global batch of a distributed
        run: `global_count`), and the matches.
    """
    batch, queries, _ = logits.shape
    counts = [len(t) for t in targets_cxcywh]
    num_targets = global_count(sum(counts), logits.device)  # over every process of a distributed run
    width = max(counts, default=0)
    labels = torch.zeros_like(logits, dtype=torch.float32)
    l1 = logits.new_zeros((), dtype=torch.float32)
    giou = logits.new_zeros((), dtype=torch.float32)
    none = torch.zeros(0, dtype=torch.long, device=logits.device)
    image = rows = cols = none
    if width:
        device = boxes_cxcywh.device
        target = torch.zeros(batch, width, 4, device=device)
        classes = torch.zeros(batch, width, dtype=torch.long, device=device)
        for b, (boxes, names) in enumerate(zip(targets_cxcywh, target_classes, strict=True)):
            target[b, : counts[b]] = boxes.to(device, torch.float32)
            classes[b, : counts[b]] = names.to(device)
        with torch.no_grad():
            # Deformable DETR's focal matching cost, for every image at once: (B, Q, T).
            p = logits.float().sigmoid().gather(2, classes[:, None, :].expand(-1, queries, -1))
            positive = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log()
            negative = 0.75 * p**2 * -(1 - p + 1e-8).log()
            predicted = boxes_cxcywh.float()
            giou_all = generalized_iou(cxcywh_to_xyxy(predicted.flatten(0, 1)), cxcywh_to_xyxy(target.flatten(0, 1)))
            pairwise_giou = giou_all.view(batch, queries, batch, width).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
            cost = (
                class_weight * (positive - negative)
                + l1_weight * torch.cdist(predicted, target, p=1)
                - giou_weight * pairwise_giou
            ).cpu()
        matches = [hungarian_match(cost[b, :, : counts[b]]) for b in range(batch)]
        image = torch.cat([torch.full_like(rows, b) for b, (rows, _) in enumerate(matches)]).to(device)
        rows = torch.cat([rows for rows, _ in matches]).to(device)
        cols = torch.cat([cols for _, cols in matches]).to(device)
        labels[image, rows, classes[image, cols]] = 1.0
        matched, wanted = boxes_cxcywh[image, rows].float(), target[image, cols]
        l1 = F.l1_loss(matched, wanted, reduction="sum")
        giou = (1 - elementwise_generalized_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(wanted))).sum()
    focal = sigmoid_focal_loss(logits.float(), labels, alpha)
    focal = (focal * valid[:, None, :].float()).sum() / num_targets
    loss = class_weight * focal + l1_weight * l1 / num_targets + giou_weight * giou / num_targets
    return loss, (image, rows, cols)


def mask_losses(mask_logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Matched masks' losses: sigmoid binary cross-entropy (mean over pixels) and dice, each averaged over masks.

    Args:
        mask_logits: (K, H, W) predicted mask logits of the matched queries.
        targets: (K, H, W) their target masks, 0/1, at the same resolution.

    Returns:
        (bce, dice); zeros when K is 0.
    """
    if len(mask_logits) == 0:
        zero = mask_logits.new_zeros((), dtype=torch.float32)
        return zero, zero
    logits, wanted = mask_logits.float().flatten(1), targets.float().flatten(1)
    bce = F.binary_cross_entropy_with_logits(logits, wanted, reduction="none").mean(1)
    prob = logits.sigmoid()
    dice = 1 - (2 * (prob * wanted).sum(1) + 1) / (prob.sum(1) + wanted.sum(1) + 1)
    return bce.mean(), dice.mean()
