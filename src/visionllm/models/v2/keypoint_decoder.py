"""The keypoint decoder: UniPose-like keypoints for any skeleton, named by the LLM's [POSE] queries.

A keypoint answer routes the object class and each point's name: "person[DET]<query>x4 nose[POSE]<query>x4, left
eye[POSE]<query>x4, ...". The object decoder finds the instances of the [DET] class; for each instance, one
keypoint query per routed name starts as the instance's final query state plus the name's feature (the [POSE]
queries' states through an MLP, averaged), placed at a first guess inside the instance's box. A deformable decoder
(self-attention among an instance's keypoints, deformable cross-attention to the object decoder's memory) refines
the points layer by layer, as UniPose's keypoint decoder does. The skeleton is whatever names the answer routed, in
that order: COCO's 17 person points or a star's 5 tips alike.

Loss: L1 between predicted and annotated points (coordinates in [0, 1] of the image), on the visible points of the
instances the object decoder matched, at the first guess and after every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMLPPredictionHead

from visionllm.config import ConfigError
from visionllm.models.common.backbone import sine_embed
from visionllm.models.common.deformable import DeformableDetrDecoder, deformable_config, inverse_sigmoid
from visionllm.models.v2.heads import ConditionPool
from visionllm.models.v2.object_decoder import ObjectOutput


@dataclass
class KeypointDecoderConfig:
    """The keypoint decoder (its width and levels are the object decoder's).

    Attributes:
        decoder_layers, num_heads, num_points, ffn_dim: its deformable decoder (UniPose: 6 layers).
        max_instances: instances decoded per image at inference, best first.
        l1_weight: weight of the keypoint L1 loss.
    """

    decoder_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 2048
    max_instances: int = 20
    l1_weight: float = 10.0

    def __post_init__(self) -> None:
        if self.decoder_layers < 1 or self.max_instances < 1:
            raise ConfigError("keypoints.decoder_layers and keypoints.max_instances must be at least 1")


class KeypointDecoder(nn.Module):
    """Instances from the object decoder + routed point names -> keypoints.

    Args:
        config: the decoder's config.
        llm_width: the LLM's hidden width.
        dim: the object decoder's width d.
        num_levels: the object decoder's feature levels.
    """

    def __init__(self, config: KeypointDecoderConfig, llm_width: int, dim: int, num_levels: int) -> None:
        super().__init__()
        self.config = config
        self.dim = dim
        self.names = ConditionPool(llm_width, dim)
        self.first_guess = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 2))
        self.position = nn.Linear(dim, dim)
        detr = deformable_config(
            dim, 1, config.decoder_layers, config.num_heads, config.ffn_dim, config.num_points, num_levels, 1
        )
        self.decoder = DeformableDetrDecoder(detr)
        self.point_head = nn.ModuleList(
            DeformableDetrMLPPredictionHead(dim, dim, 2, 2) for _ in range(config.decoder_layers)
        )
        for head in self.point_head:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        self.decoder.bbox_embed = self.point_head

    def forward(
        self, objects: ObjectOutput, image: Tensor, query: Tensor, names: Sequence[Sequence[Tensor]]
    ) -> list[Tensor]:
        """Keypoints of M instances.

        Args:
            objects: the object decoder's output for the batch.
            image, query: (M,) each instance's image in the batch and its object query.
            names: per image of the batch, one (n, llm_width) tensor of query states per routed point name.

        Returns:
            (M, K, 2) points, x y in [0, 1] of the image, at the first guess and after each layer (the last is the
            prediction); K: the most names of any image (an image's extra columns are meaningless).
        """
        features, _ = self.names(names)  # (B, K, d)
        instances = objects.hidden[image, query]  # (M, d)
        boxes = objects.boxes[image, query].float()  # (M, 4)
        target = instances[:, None, :] + features[image].to(instances.dtype)  # (M, K, d)
        guess = boxes[:, None, :2] + 0.5 * boxes[:, None, 2:] * torch.tanh(self.first_guess(target).float())
        guess = guess.clamp(1e-3, 1 - 1e-3)
        query_pos = self.position(sine_embed(guess, self.dim // 2).to(target.dtype))
        levels = objects.levels.select(image)
        memory = objects.memory[image]
        decoded = levels.decode(self.decoder, target, query_pos, guess.detach().to(target.dtype), memory)
        points = [guess]
        for layer in range(self.config.decoder_layers):
            hidden = decoded.intermediate_hidden_states[:, layer]
            previous = guess.detach() if layer == 0 else decoded.intermediate_reference_points[:, layer - 1]
            delta = self.point_head[layer](hidden).float()
            points.append((delta + inverse_sigmoid(previous.float())).sigmoid())
        return points

    def loss(self, points: Sequence[Tensor], wanted: Tensor) -> Tensor:
        """L1 over the visible points, averaged over them and the layers.

        Args:
            points: the forward's per-layer (M, K, 2) points.
            wanted: (M, K, 3) annotated x, y in [0, 1] and visibility (> 0: labelled).
        """
        visible = (wanted[..., 2] > 0).float()
        count = visible.sum().clamp(min=1)
        total = sum(((p - wanted[..., :2].to(p)).abs().sum(-1) * visible).sum() / count for p in points)
        return self.config.l1_weight * total / len(points)
