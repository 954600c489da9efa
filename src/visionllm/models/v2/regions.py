"""Visual prompts of VisionLLM v2: points, boxes, scribbles, polygons and masks become one vector per region.

Every prompt kind is first drawn as a binary mask of the image (`prompt_mask`). The region encoder then reads the
image and the mask together (4 channels) through three convolutions that bring them to the vision encoder's patch
grid (k = p/2 stride p/2 -> 64, k2 s2 -> 256, k1 -> the encoder width, LayerNorm2d + GELU between: for the paper's
14 px patches, k7 s7 and k2 s2), adds the result to the encoder's features of its last three layers, samples those
at points inside the mask (bilinear, `grid_sample`) and averages them into one vector, projected to the LLM width.
That vector replaces the region's `<region>` placeholder in the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionllm.formats.prompts import PROMPT_KINDS, RegionError, RegionPrompt, prompt_mask

__all__ = ["PROMPT_KINDS", "RegionEncoder", "RegionError", "RegionPrompt", "prompt_mask"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RegionEncoder(nn.Module):
    """Image + region mask -> one vector per region in the LLM's embedding space.

    Args:
        vision_width: width of the vision encoder's features.
        llm_width: the LLM's embedding width.
        patch: the vision encoder's patch size in pixels (even): the mask stack downsamples by it.
        num_points: points sampled inside each mask (fewer when the mask has fewer feature cells).
        num_levels: how many of the encoder's last layers the region reads.
    """

    def __init__(self, vision_width: int, llm_width: int, patch: int = 14, num_points: int = 32, num_levels: int = 3):
        super().__init__()
        if patch % 2:
            raise ValueError(f"the patch size must be even (the stack downsamples by patch/2, then 2), got {patch}")
        half = patch // 2
        self.patch, self.num_points, self.num_levels = patch, num_points, num_levels
        self.mask_stack = nn.Sequential(
            nn.Conv2d(4, 64, kernel_size=half, stride=half),
            LayerNorm2d(64),
            nn.GELU(),
            nn.Conv2d(64, 256, kernel_size=2, stride=2),
            LayerNorm2d(256),
            nn.GELU(),
            nn.Conv2d(256, vision_width, kernel_size=1),
        )
        self.proj = nn.Sequential(nn.Linear(vision_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))

    def sample_points(self, mask: Tensor) -> Tensor:
        """(P, 2) points inside a (H, W) mask, in grid_sample's [-1, 1] (x, y): up to `num_points` of its pixels,
        evenly spread over them in raster order.

        Raises:
            RegionError: an empty mask.
        """
        inside = mask.nonzero()
        if len(inside) == 0:
            raise RegionError("a region mask is empty: a visual prompt must mark at least one pixel of its image")
        pick = torch.linspace(0, len(inside) - 1, min(self.num_points, len(inside)), device=mask.device).round().long()
        yx = inside[pick].to(torch.float32) + 0.5
        h, w = mask.shape
        return torch.stack([yx[:, 1] / w, yx[:, 0] / h], dim=1) * 2 - 1

    def forward(self, pixels: Tensor, masks: Tensor, image_index: Tensor, levels: Sequence[Tensor]) -> Tensor:
        """One vector per region.

        Args:
            pixels: (B, 3, S, S) the normalised images.
            masks: (R, S, S) the regions' masks at the images' size, 1 inside.
            image_index: (R,) which image each region belongs to.
            levels: the vision encoder's features, (B, S/p, S/p, C) each; the last `num_levels` are read.

        Returns:
            (R, llm_width).

        Raises:
            RegionError: an empty mask (never a NaN).
        """
        if len(masks) == 0:
            return pixels.new_zeros(0, self.proj[-1].out_features)
        inputs = torch.cat([pixels[image_index], masks[:, None].to(pixels.dtype)], dim=1)
        prompt = self.mask_stack(inputs)  # (R, C, S/p, S/p)
        vectors = []
        for r, mask in enumerate(masks.bool()):
            points = self.sample_points(mask)[None, None].float()  # (1, 1, P, 2)
            samples = [
                F.grid_sample(
                    (level[image_index[r]].permute(2, 0, 1) + prompt[r])[None].float(), points, align_corners=False
                )[0, :, 0]
                for level in levels[-self.num_levels :]
            ]  # each (C, P)
            vectors.append(torch.stack(samples).mean(dim=(0, 2)))
        return self.proj(torch.stack(vectors).to(self.proj[0].weight.dtype))
