"""Patch labels: a training aid for a vision encoder that learns from scratch.

The paper's encoder is a CLIP pretrained on hundreds of millions of images: its patch tokens already say what is
where, and the chat model only learns to read them. An encoder trained from scratch on a small budget learns that
only through the LLM's text loss, which reaches each patch weakly. With `patch_labels` set, a linear head on every
image token (before the bridge) is trained to say what covers its patch, from the instance annotations the
perception tasks use anyway:

- the share of the patch each category covers (background the rest): a soft cross-entropy;
- the share each colour covers (objects' `attributes["color"]`), where the preset lists colours;
- whether an object's box centre lies in the patch (binary cross-entropy), which counting questions need.

The head is not used at inference; its loss joins the text loss in training with weight `weight`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionllm.config import ConfigError
from visionllm.data.sample import ObjectAnnotation


@dataclass
class PatchLabelConfig:
    """What the patch-label head predicts.

    Attributes:
        categories: the object categories it tells apart (others count as background).
        colors: the colours it tells apart (empty: no colour target).
        weight: weight of its loss beside the text loss (0: the head is kept but not trained).
    """

    categories: list[str]
    colors: list[str] = field(default_factory=list)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.categories:
            raise ConfigError("patch_labels.categories must name at least one category")
        if self.weight < 0:
            raise ConfigError("patch_labels.weight must be at least 0")

    @property
    def channels(self) -> int:
        """Target channels per patch: background + categories, background + colours (if any), the centre."""
        return 1 + len(self.categories) + (1 + len(self.colors) if self.colors else 0) + 1


def patch_targets(
    config: PatchLabelConfig,
    objects: Sequence[tuple[ObjectAnnotation, np.ndarray]],
    size_wh: tuple[int, int],
    grid: int,
) -> Tensor:
    """The targets of one image (channels, grid, grid) from its objects and their visible masks (H, W) in the
    image's pixels; later objects cover earlier ones where masks overlap."""
    width, height = size_wh
    cats = {name: i + 1 for i, name in enumerate(config.categories)}
    colors = {name: i + 1 for i, name in enumerate(config.colors)}
    category_map = np.zeros((height, width), np.int64)
    color_map = np.zeros((height, width), np.int64)
    centres = torch.zeros(grid, grid)
    for obj, mask in objects:
        category_map[mask] = cats.get(obj.category, 0)
        color_map[mask] = colors.get((obj.attributes or {}).get("color", ""), 0)
        x1, y1, x2, y2 = obj.box_xyxy_px
        col = min(grid - 1, max(0, int((x1 + x2) / 2 / width * grid)))
        row = min(grid - 1, max(0, int((y1 + y2) / 2 / height * grid)))
        centres[row, col] = 1.0
    parts = [_shares(category_map, 1 + len(cats), grid)]
    if colors:
        parts.append(_shares(color_map, 1 + len(colors), grid))
    return torch.cat([*parts, centres[None]])


def _shares(labels: np.ndarray, classes: int, grid: int) -> Tensor:
    """The share of each grid cell each label covers (classes, grid, grid)."""
    onehot = F.one_hot(torch.from_numpy(labels), classes).permute(2, 0, 1).float()[None]
    return F.adaptive_avg_pool2d(onehot, grid)[0]


class PatchLabelHead(nn.Module):
    """A linear head on the image tokens and its loss."""

    def __init__(self, config: PatchLabelConfig, width: int) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(width, config.channels)

    def loss(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """Soft cross-entropy of the category and colour shares plus the centres' binary cross-entropy, for image
        tokens (B, g*g, C) and targets (B, channels, g, g)."""
        logits = self.proj(tokens.to(self.proj.weight.dtype)).float()  # (B, g*g, channels)
        wanted = targets.flatten(2).transpose(1, 2).to(logits.device)
        split = [1 + len(self.config.categories)]
        if self.config.colors:
            split.append(1 + len(self.config.colors))
        loss = logits.new_zeros(())
        start = 0
        for size in split:
            part = slice(start, start + size)
            loss = loss + -(wanted[..., part] * F.log_softmax(logits[..., part], -1)).sum(-1).mean()
            start += size
        return loss + F.binary_cross_entropy_with_logits(logits[..., -1], wanted[..., -1])
