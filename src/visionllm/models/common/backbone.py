"""Image backbones: a transformers ResNet or Swin giving feature maps at strides 4 to 32."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import ResNetBackbone, ResNetConfig, SwinBackbone, SwinConfig

from visionllm.config import BackboneConfig

OUT_FEATURES = ["stage2", "stage3", "stage4"]
"""The stages read by default: strides 8, 16, 32 ("stage1", stride 4, can be added)."""


class Backbone(nn.Module):
    """A transformers ResNet or Swin read at several scales.

    Input: (B, 3, H, W) normalised RGB. Output: a map (B, C_l, H / s_l, W / s_l) per stage of `out_features`
    (stage1..stage4: strides 4, 8, 16, 32).

    Args:
        config: the backbone's layout, or the local folder of its pretrained weights.
        load_weights: load `config.pretrained`'s weights (False when a checkpoint of the whole model follows).
        out_features: the stages read.
    """

    def __init__(
        self, config: BackboneConfig, load_weights: bool = True, out_features: Sequence[str] = OUT_FEATURES
    ) -> None:
        super().__init__()
        out = list(out_features)
        net_class, config_class = (
            (ResNetBackbone, ResNetConfig) if config.kind == "resnet" else (SwinBackbone, SwinConfig)
        )
        if config.pretrained and load_weights:
            net = net_class.from_pretrained(config.pretrained, out_features=out)
        else:
            if config.pretrained:
                net_config = config_class.from_pretrained(config.pretrained, out_features=out)
            elif config.kind == "resnet":
                net_config = ResNetConfig(
                    embedding_size=config.embedding_size,
                    hidden_sizes=list(config.hidden_sizes),
                    depths=list(config.depths),
                    layer_type=config.layer_type,
                    out_features=out,
                )
            else:
                net_config = SwinConfig(
                    embed_dim=config.embedding_size,
                    depths=list(config.depths),
                    num_heads=list(config.num_heads),
                    window_size=config.window_size,
                    out_features=out,
                )
            net = net_class(net_config)
        # The attribute's name is part of the checkpoints' parameter names.
        setattr(self, config.kind, net)
        self.kind = config.kind
        self.channels: list[int] = list(net.channels)
        if config.frozen:
            net.requires_grad_(False)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        return list(getattr(self, self.kind)(pixel_values).feature_maps)


def sine_position_2d(height: int, width: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(H * W, dim) sine embedding of normalised (y, x) cell centres, DETR style."""
    half = dim // 2
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.cat([sine_embed(yy.reshape(-1, 1), half), sine_embed(xx.reshape(-1, 1), half)], dim=-1).to(dtype)


def sine_embed(values: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of (..., k) values in [0, 1] into (..., k * dim) features."""
    freqs = temperature ** (2 * (torch.arange(dim // 2, device=values.device, dtype=torch.float32)) / dim)
    angles = values.float()[..., None] * 2 * torch.pi / freqs
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return emb.flatten(-2)
