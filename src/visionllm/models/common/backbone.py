"""Image backbone: a transformers ResNet giving feature maps at strides 8, 16 and 32."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import ResNetBackbone, ResNetConfig

from visionllm.config import BackboneConfig

OUT_FEATURES = ["stage2", "stage3", "stage4"]


class Backbone(nn.Module):
    """ResNet features at 3 scales.

    Input: (B, 3, H, W) normalised RGB. Output: 3 maps (B, C_l, H / s_l, W / s_l), s = 8, 16, 32.
    """

    def __init__(self, config: BackboneConfig, load_weights: bool = True) -> None:
        super().__init__()
        if config.pretrained and load_weights:
            self.resnet = ResNetBackbone.from_pretrained(config.pretrained, out_features=OUT_FEATURES)
        else:
            if config.pretrained:
                resnet_config = ResNetConfig.from_pretrained(config.pretrained, out_features=OUT_FEATURES)
            else:
                resnet_config = ResNetConfig(
                    embedding_size=config.embedding_size,
                    hidden_sizes=list(config.hidden_sizes),
                    depths=list(config.depths),
                    layer_type=config.layer_type,
                    out_features=OUT_FEATURES,
                )
            self.resnet = ResNetBackbone(resnet_config)
        self.channels: list[int] = list(self.resnet.num_features[2:])
        if config.frozen:
            self.resnet.requires_grad_(False)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        return list(self.resnet(pixel_values).feature_maps)


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
