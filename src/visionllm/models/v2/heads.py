"""The object decoder's links to the LLM: category features from super-link queries, queries classified by them,
and masks from query embeddings and pixel features.

A detection answer "red circle[DET]<query>x4, star[DET]<query>x4" gives each category 4 query states from the LLM;
an MLP (LLM width -> d -> d) maps them and their mean is the category's feature, in the decoder's width d. The
decoder's object queries are then classified by their dot product with these features (scaled by 1/sqrt(d), plus
a learned bias starting at a 0.01 prior, as Grounding DINO classifies against text features): the category set is
whatever the LLM routed, any size, per image. Masks are each object query's embedding dotted with per-pixel
features at stride 4 (the mask head of Mask DINO-style decoders).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConditionPool(nn.Module):
    """A routed group's query states (n, llm_width) -> one feature (d): an MLP, then the mean over the queries.

    Args:
        llm_width: the LLM's hidden width.
        dim: the decoder's width d.
    """

    def __init__(self, llm_width: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(llm_width, dim), nn.ReLU(), nn.Linear(dim, dim))

    def pooled(self, states: Sequence[Tensor]) -> Tensor:
        """The features (N, d) of N groups of query states, each (n, llm_width) (every group has the same n)."""
        return self.mlp(torch.stack(list(states)).to(self.mlp[0].weight.dtype)).mean(1)

    def forward(self, conditions: Sequence[Sequence[Tensor]]) -> tuple[Tensor, Tensor]:
        """Per image, its groups' features (B, G, d) (G: the most groups of any image) and which exist (B, G).

        Args:
            conditions: per image, one (n, llm_width) tensor of query states per routed group, in answer order.
        """
        width = max([1, *(len(c) for c in conditions)])
        weight = self.mlp[0].weight
        features = torch.zeros(len(conditions), width, self.dim, device=weight.device)
        valid = torch.zeros(len(conditions), width, dtype=torch.bool, device=weight.device)
        states = [state for c in conditions for state in c]
        if not states:
            return features, valid
        pooled = self.pooled(states)
        at = torch.tensor([(b, g) for b, c in enumerate(conditions) for g in range(len(c))], device=weight.device)
        features = features.to(pooled.dtype).index_put((at[:, 0], at[:, 1]), pooled)
        valid[at[:, 0], at[:, 1]] = True
        return features, valid


SEPARATION_MARGIN = 0.5
"""Two different phrases' category features may have a cosine up to this before `phrase_separation` penalises it."""


def phrase_separation(features: Tensor, keys: Sequence[Hashable]) -> Tensor:
    """Mean over the pairs of different phrases of (cosine - `SEPARATION_MARGIN`)^2 where positive: (N, d) category
    features, `keys` what each one's phrase is (equal keys: the same phrase). 0 with fewer than two phrases."""
    unit = F.normalize(features.float(), dim=-1)
    codes = {key: k for k, key in enumerate(dict.fromkeys(keys))}
    index = torch.tensor([codes[key] for key in keys], device=features.device)
    different = index[:, None] != index[None, :]
    if not different.any():
        return features.sum() * 0
    excess = (unit @ unit.T - SEPARATION_MARGIN).clamp(min=0)
    return excess[different].pow(2).mean()


class CategoryHead(nn.Module):
    """LLM query states -> category features, and object queries -> class logits against them.

    Args:
        llm_width: the LLM's hidden width.
        dim: the object decoder's width d.
    """

    def __init__(self, llm_width: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.pool = ConditionPool(llm_width, dim)
        self.bias = nn.Parameter(torch.tensor(-4.6))  # sigmoid prior 0.01

    def categories(self, conditions: Sequence[Sequence[Tensor]]) -> tuple[Tensor, Tensor]:
        """Per image, its categories' features (B, C, d) and which exist (B, C) (`ConditionPool`)."""
        return self.pool(conditions)

    def logits(self, queries: Tensor, features: Tensor, valid: Tensor) -> Tensor:
        """(B, Q, d) object queries -> (B, Q, C) class logits; categories that do not exist get -1e4."""
        logits = queries @ features.transpose(1, 2).to(queries.dtype) / self.dim**0.5 + self.bias
        return logits.masked_fill(~valid[:, None, :], -1e4)


class MaskHead(nn.Module):
    """Object-query embeddings x per-pixel features -> mask logits at stride 4.

    Args:
        dim: the decoder's width d.
        in_channels: channels of the stride-4 feature map it reads (from the decoder's backbone).
    """

    def __init__(self, dim: int, in_channels: int) -> None:
        super().__init__()
        self.pixel = nn.Sequential(
            nn.Conv2d(in_channels, dim, kernel_size=1),
            nn.GroupNorm(min(32, dim // 4), dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, kernel_size=3, padding=1),
        )
        self.query = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, queries: Tensor, stride4: Tensor, extra: Tensor | None = None) -> Tensor:
        """(B, Q, d) queries and a (B, C_in, H/4, W/4) map (plus `extra` (B, d, H/4, W/4) pixel features, such as
        an upsampled encoder level) -> (B, Q, H/4, W/4) mask logits."""
        pixels = self.pixel(stride4)
        if extra is not None:
            pixels = pixels + extra
        return torch.einsum("bqd,bdhw->bqhw", self.query(queries), pixels)


def upsample_masks(mask_logits: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """Mask logits (..., h, w) resized to an image's (H, W), bilinear."""
    flat = mask_logits.reshape(-1, 1, *mask_logits.shape[-2:])
    out = F.interpolate(flat, size=size_hw, mode="bilinear", align_corners=False)
    return out.reshape(*mask_logits.shape[:-2], *size_hw)
