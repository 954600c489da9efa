"""Contrastive denoising queries (DINO): a training aid for the object decoder.

In training, each image's target boxes are given to the decoder again as extra queries, jittered: a positive query's
corners move by less than `box_noise` of the box's half size and it must recover the box and its category; a
negative query's corners move by between one and two times that and it must say "no object". The query's content is
its category's feature (swapped for another routed category with probability `label_noise`), its position the
jittered box. The decoder thus learns to refine a box it is handed from the first step, instead of only after
matching has settled. The denoising queries of each group run as their own rows of the decoder (beside the image's
matching queries, never with them), so neither sees the other. Inference never builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from visionllm.models.common.detr_loss import sigmoid_focal_loss
from visionllm.ops.tensor_boxes import cxcywh_to_xyxy, elementwise_generalized_iou


@dataclass
class DenoisingQueries:
    """The denoising queries of a batch, one row per (image, group), padded to the longest row.

    Attributes:
        rows: (R,) the image each row belongs to.
        reference: (R, N, 4) the jittered boxes, cx cy w h in [0, 1] (the queries' positions).
        classes: (R, N) the category whose feature each query carries (after label noise).
        target_classes: (R, N) the true category of positive queries (0 elsewhere).
        target_boxes: (R, N, 4) the true box of every query's object.
        positive: (R, N) queries that must recover their object; real: (R, N) queries that are not padding.
    """

    rows: Tensor
    reference: Tensor
    classes: Tensor
    target_classes: Tensor
    target_boxes: Tensor
    positive: Tensor
    real: Tensor


def denoising_queries(
    boxes: Sequence[Tensor],
    classes: Sequence[Tensor],
    num_classes: Sequence[int],
    groups: int,
    box_noise: float,
    label_noise: float,
) -> DenoisingQueries | None:
    """The denoising queries for images with these targets ((T, 4) cx cy w h boxes, (T,) classes, and how many
    categories each image routed); None when no image has a target."""
    rows, references, carried, wanted, targets, positive = [], [], [], [], [], []
    for image, (box, cls, count) in enumerate(zip(boxes, classes, num_classes, strict=True)):
        if len(box) == 0:
            continue
        box, cls, device = box.float(), cls.long(), box.device
        for _ in range(groups):
            both = torch.cat([box, box])
            sign = torch.randint(0, 2, both.shape, device=device) * 2.0 - 1.0
            scale = torch.rand(both.shape, device=device)
            scale[len(box) :] += 1.0  # negatives: between one and two times the noise
            corners = cxcywh_to_xyxy(both)
            half = torch.cat([both[:, 2:] / 2, both[:, 2:] / 2], 1)
            corners = (corners + sign * scale * box_noise * half).clamp(0.0, 1.0)
            x1, y1 = torch.minimum(corners[:, 0], corners[:, 2]), torch.minimum(corners[:, 1], corners[:, 3])
            x2, y2 = torch.maximum(corners[:, 0], corners[:, 2]), torch.maximum(corners[:, 1], corners[:, 3])
            size = torch.stack([x2 - x1, y2 - y1], 1).clamp(min=1e-3)
            jittered = torch.cat([torch.stack([(x1 + x2) / 2, (y1 + y2) / 2], 1), size], 1)
            label = torch.cat([cls, cls])
            if count > 1:
                flip = torch.rand(len(label), device=device) < label_noise
                label = torch.where(flip, torch.randint(0, count, label.shape, device=device), label)
            rows.append(image)
            references.append(jittered)
            carried.append(label)
            wanted.append(torch.cat([cls, torch.zeros_like(cls)]))
            targets.append(both)
            positive.append(torch.arange(2 * len(box), device=device) < len(box))
    if not rows:
        return None
    width = max(len(r) for r in references)

    def padded(values: list[Tensor], fill: float | bool) -> Tensor:
        return torch.stack([torch.cat([v, v.new_full((width - len(v), *v.shape[1:]), fill)]) for v in values])

    real = torch.stack([torch.arange(width, device=r.device) < len(r) for r in references])
    return DenoisingQueries(
        rows=torch.tensor(rows, device=references[0].device),
        reference=padded(references, 0.5),
        classes=padded(carried, 0),
        target_classes=padded(wanted, 0),
        target_boxes=padded(targets, 0.5),
        positive=padded(positive, False),
        real=real,
    )


def denoising_loss(
    layer_logits: Sequence[Tensor],
    layer_boxes: Sequence[Tensor],
    queries: DenoisingQueries,
    valid: Tensor,
    class_weight: float,
    l1_weight: float,
    giou_weight: float,
    alpha: float = 0.25,
) -> Tensor:
    """Focal loss on every real query (positives their category, negatives none), L1 and GIoU on the positives,
    each normalised by the number of positives, averaged over the decoder's layers. `valid`: (R, C) the routed
    categories of each row's image."""
    device = layer_logits[0].device
    positive, real = queries.positive.to(device), queries.real.to(device)
    count = max(1, int(positive.sum()))
    labels = torch.zeros_like(layer_logits[0], dtype=torch.float32)
    row, column = positive.nonzero(as_tuple=True)
    labels[row, column, queries.target_classes.to(device)[row, column]] = 1.0
    scored = (valid[:, None, :] & real[:, :, None]).float()
    wanted = queries.target_boxes.to(device)[row, column]
    total = labels.new_zeros(())
    for logits, boxes in zip(layer_logits, layer_boxes, strict=True):
        focal = (sigmoid_focal_loss(logits.float(), labels, alpha) * scored).sum() / count
        matched = boxes[row, column].float()
        l1 = F.l1_loss(matched, wanted, reduction="sum") / count
        giou = (1 - elementwise_generalized_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(wanted))).sum() / count
        total = total + class_weight * focal + l1_weight * l1 + giou_weight * giou
    return total / len(layer_logits)
