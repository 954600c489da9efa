"""v2's image side: a CLIP vision transformer read at its penultimate layer, and the bridge into the LLM.

The encoder is transformers' `CLIPVisionModel`, built from `VisionConfig` (the paper's preset: ViT-L/14 at 336 px,
576 patch tokens) or loaded from a local folder. The class token is dropped; the patch tokens of the chosen layer
(the penultimate by default) are the image's tokens, and the last `region_levels` layers are what the region
encoder reads. The bridge is an MLP (Linear, GELU, Linear) into the LLM's embedding width.

For training from scratch on a small CPU budget, `vision.backbone` swaps the transformer for a convolutional
backbone (a transformers ResNet or Swin, `visionllm.config.BackboneConfig`): its stride 8, 16 and 32 maps, each
projected to `hidden_size` and resized to the stride-16 grid (`patch_size` must be 16), are the region encoder's
three levels, and their sum (normalised) the image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from visionllm.config import BackboneConfig, ConfigError
from visionllm.models.common.backbone import Backbone
from visionllm.models.common.checkpoint import load_renamed

BACKBONE_NAMES = (("backbone.", "backbone."),)
"""A v1 checkpoint's weight names -> the convolutional encoder's (`vision.init_backbone`)."""


@dataclass
class VisionConfig:
    """The CLIP vision encoder.

    Attributes:
        pretrained: a local folder with a CLIP (vision) checkpoint; None builds one from the sizes below.
        backbone: a convolutional backbone instead of the transformer (see the module); its grid is stride 16.
        image_size, patch_size: input side and patch size in pixels (the grid is image_size / patch_size).
        hidden_size, num_layers, num_heads, intermediate_size: the transformer's layout.
        feature_layer: the layer whose patch tokens become the image tokens (-2: the penultimate, as LLaVA).
        region_levels: how many of the last layers (up to `feature_layer`) the region encoder reads.
        freeze: keep the encoder's weights fixed (the paper trains it in no stage).
        init_backbone: with `backbone`, a trained VisionLLM v1 model folder whose backbone (`backbone.*`) a training
            stage that starts this encoder fresh starts it from, where names and shapes match: the pretrained
            encoder of the paper, for a preset that cannot download one. Read when a stage starts the encoder,
            never when a trained model loads. None: a fresh encoder.
    """

    pretrained: str | None = None
    backbone: BackboneConfig | None = None
    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    feature_layer: int = -2
    region_levels: int = 3
    freeze: bool = True
    init_backbone: str | None = None

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.image_size ({self.image_size}) must be a multiple of vision.patch_size")
        if self.init_backbone and self.backbone is None:
            raise ConfigError("vision.init_backbone starts a convolutional encoder: set vision.backbone too")
        if self.backbone is not None:
            if self.patch_size != 16 or not 1 <= self.region_levels <= 3:
                raise ConfigError("vision.backbone reads a stride-16 grid: patch_size must be 16, region_levels 1 to 3")
            return
        if not -self.num_layers <= self.feature_layer < 0:
            raise ConfigError(f"vision.feature_layer counts from the end: -1 .. -{self.num_layers}")
        if not 1 <= self.region_levels <= self.num_layers + 1 + self.feature_layer:
            raise ConfigError("vision.region_levels must be at least 1 and fit below vision.feature_layer")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size


class VisionEncoder(nn.Module):
    """Images -> patch tokens of the feature layer (B, g*g, C), and the last layers as maps (B, g, g, C).

    Args:
        config: the encoder.
        load_weights: load `config.pretrained` (False when a checkpoint will overwrite the weights).
    """

    def __init__(self, config: VisionConfig, load_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        if config.backbone is not None:
            self.cnn = ConvolutionalEncoder(config.backbone, config.hidden_size, load_weights)
            if config.freeze:
                self.cnn.requires_grad_(False)
            self.width: int = config.hidden_size
            return
        if config.pretrained and load_weights:
            self.clip = CLIPVisionModel.from_pretrained(config.pretrained, attn_implementation="sdpa")
        else:
            clip_config = (
                CLIPVisionConfig.from_pretrained(config.pretrained)
                if config.pretrained
                else CLIPVisionConfig(
                    hidden_size=config.hidden_size,
                    intermediate_size=config.intermediate_size,
                    num_hidden_layers=config.num_layers,
                    num_attention_heads=config.num_heads,
                    image_size=config.image_size,
                    patch_size=config.patch_size,
                )
            )
            clip_config._attn_implementation = "sdpa"
            self.clip = CLIPVisionModel(clip_config)
        if config.freeze:
            self.clip.requires_grad_(False)
        self.width: int = self.clip.config.hidden_size

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Returns the image tokens (B, g*g, C) of `feature_layer` and the `region_levels` layers that end there,
        each (B, g, g, C) (class token dropped)."""
        if self.config.backbone is not None:
            levels = self.cnn(pixel_values)
            tokens = self.cnn.norm(sum(levels))
            return tokens.flatten(1, 2), levels[3 - self.config.region_levels :]
        out = self.clip(pixel_values=pixel_values, output_hidden_states=True)
        states = out.hidden_states  # embeddings + every layer: (B, 1 + g*g, C) each
        end = len(states) + self.config.feature_layer
        g = pixel_values.shape[-1] // self.clip.config.patch_size
        levels = [s[:, 1:].reshape(len(s), g, g, -1) for s in states[end - self.config.region_levels + 1 : end + 1]]
        return states[end][:, 1:], levels


class ConvolutionalEncoder(nn.Module):
    """A ResNet or Swin read at strides 8, 16 and 32, each map projected to `width` and resized to the stride-16
    grid: three (B, g, g, width) levels (`norm` normalises their sum into the image tokens)."""

    def __init__(self, backbone: BackboneConfig, width: int, load_weights: bool = True) -> None:
        super().__init__()
        self.backbone = Backbone(backbone, load_weights)
        self.proj = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in self.backbone.channels)
        self.norm = nn.LayerNorm(width)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        grid = pixel_values.shape[-1] // 16
        levels = []
        for proj, feature in zip(self.proj, self.backbone(pixel_values), strict=True):
            level = proj(feature)
            if level.shape[-1] != grid:
                level = F.interpolate(level, size=(grid, grid), mode="bilinear", align_corners=False)
            levels.append(level.permute(0, 2, 3, 1))
        return levels

    def load_backbone(self, folder: str | Path) -> tuple[list[str], list[str]]:
        """Start the backbone from a VisionLLM v1 model's (`backbone.*`) where names and shapes match.

        Returns:
            The names of this encoder's weights loaded, and of those left as they were.

        Raises:
            CheckpointError: no readable model.safetensors in `folder`, or nothing in it fits.
        """
        return load_renamed(self, folder, BACKBONE_NAMES, "vision.init_backbone")


class Bridge(nn.Module):
    """Vision features -> the LLM's embedding space: Linear, GELU, Linear (the paper: 1024 -> 4096 -> 4096)."""

    def __init__(self, vision_width: int, llm_width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(vision_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))

    def forward(self, features: Tensor) -> Tensor:
        return self.mlp(features)
