"""Deformable DETR wiring shared by the image tokenizer (v1) and the object decoder (v2).

Also the cross-attention that makes image features language-aware (`TextFusion`).

transformers' `DeformableDetrEncoder` / `DeformableDetrDecoder` (multi-scale deformable attention in pure PyTorch)
do the work; this module builds their config and feeds them: flattened levels with sine positions, grid proposals
for two-stage query selection, and boxes refined layer by layer. The modules stay attributes of their owners (their
parameter names are those of the checkpoints already written).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.models.deformable_detr.configuration_deformable_detr import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrDecoder,
    DeformableDetrEncoder,
    inverse_sigmoid,
)

from visionllm.models.common.backbone import sine_embed, sine_position_2d


def deformable_config(
    d_model: int,
    encoder_layers: int,
    decoder_layers: int,
    num_heads: int,
    ffn_dim: int,
    num_points: int,
    num_levels: int,
    num_queries: int,
    dropout: float = 0.0,
) -> DeformableDetrConfig:
    """The config of a deformable encoder / decoder pair (two-stage selection and refinement are done here)."""
    return DeformableDetrConfig(
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=num_heads,
        decoder_attention_heads=num_heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        encoder_n_points=num_points,
        decoder_n_points=num_points,
        num_feature_levels=num_levels,
        num_queries=num_queries,
        dropout=dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        use_pretrained_backbone=False,
    )


@dataclass
class Levels:
    """Multi-scale features flattened into one sequence, with what deformable attention needs to read them.

    Attributes:
        tokens: (B, N, d) every level's positions, level after level.
        position: (B, N, d) sine position + level embedding.
        shapes: each level's (H, W); spatial_shapes: the same as a (L, 2) tensor; level_start: (L,) offsets.
        mask: (B, N) all True (images are not padded); valid_ratios: (B, L, 2) all ones.
    """

    tokens: Tensor
    position: Tensor
    shapes: list[tuple[int, int]]
    spatial_shapes: Tensor
    level_start: Tensor
    mask: Tensor
    valid_ratios: Tensor

    @classmethod
    def flatten(cls, maps: Sequence[Tensor], level_embed: Tensor) -> Levels:
        """(B, d, H_l, W_l) maps -> one sequence; `level_embed` (L, d) tells the levels apart."""
        tokens, positions, shapes = [], [], []
        for level, feature in enumerate(maps):
            batch, dim, height, width = feature.shape
            tokens.append(feature.flatten(2).transpose(1, 2))
            position = sine_position_2d(height, width, dim, feature.device, feature.dtype) + level_embed[level]
            positions.append(position.unsqueeze(0).expand(batch, -1, -1))
            shapes.append((height, width))
        return cls.of(tokens, positions, shapes)

    @classmethod
    def of(cls, tokens: Sequence[Tensor], positions: Sequence[Tensor], shapes: Sequence[tuple[int, int]]) -> Levels:
        """Levels from per-level (B, H*W, d) tokens and positions."""
        flat = torch.cat(list(tokens), 1)
        spatial_shapes = torch.as_tensor(list(shapes), dtype=torch.long, device=flat.device)
        level_start = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        batch = flat.shape[0]
        return cls(
            tokens=flat,
            position=torch.cat(list(positions), 1),
            shapes=list(shapes),
            spatial_shapes=spatial_shapes,
            level_start=level_start,
            mask=torch.ones(flat.shape[:2], dtype=torch.bool, device=flat.device),
            valid_ratios=torch.ones(batch, len(shapes), 2, device=flat.device, dtype=flat.dtype),
        )

    def select(self, index: Tensor) -> Levels:
        """These levels for the images at `index` (M,), in that order (an image may repeat)."""
        return Levels(
            tokens=self.tokens[index],
            position=self.position[index],
            shapes=self.shapes,
            spatial_shapes=self.spatial_shapes,
            level_start=self.level_start,
            mask=self.mask[index],
            valid_ratios=self.valid_ratios[index],
        )

    def encode(self, encoder: DeformableDetrEncoder) -> Tensor:
        """The encoder's memory (B, N, d) over these levels."""
        return encoder(
            inputs_embeds=self.tokens,
            attention_mask=self.mask,
            spatial_position_embeddings=self.position,
            spatial_shapes=self.spatial_shapes,
            spatial_shapes_list=self.shapes,
            level_start_index=self.level_start,
            valid_ratios=self.valid_ratios,
        ).last_hidden_state

    def decode(
        self, decoder: DeformableDetrDecoder, target: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor
    ):
        """The decoder's output (its intermediate states and reference points) for queries over `memory`."""
        return decoder(
            inputs_embeds=target,
            encoder_hidden_states=memory,
            encoder_attention_mask=self.mask,
            object_queries_position_embeddings=query_pos,
            reference_points=reference,
            spatial_shapes=self.spatial_shapes,
            spatial_shapes_list=self.shapes,
            level_start_index=self.level_start,
            valid_ratios=self.valid_ratios,
        )


def grid_proposals(shapes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> Tensor:
    """One proposal per encoder position: its cell centre, size 0.05 * 2^level (inverse-sigmoid space)."""
    proposals = []
    for level, (height, width) in enumerate(shapes):
        y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        size = torch.full_like(xx, 0.05 * 2.0**level)
        proposals.append(torch.stack([xx, yy, size, size], -1).reshape(-1, 4))
    boxes = torch.cat(proposals).clamp(1e-4, 1 - 1e-4)
    return torch.log(boxes / (1 - boxes)).to(dtype)


def box_sine(coords_logits: Tensor, dim_per_coord: int) -> Tensor:
    """(B, Q, 4) boxes in inverse-sigmoid space -> (B, Q, 4 * dim_per_coord) sine embedding."""
    return sine_embed(coords_logits.sigmoid(), dim_per_coord).to(coords_logits.dtype)


def refined_boxes(delta: Tensor, previous: Tensor) -> Tensor:
    """A layer's boxes (cx, cy, w, h in [0, 1]): its predicted delta applied to the reference it read (4-d boxes,
    or 2-d points whose size the delta gives)."""
    if previous.shape[-1] == 4:
        return (delta + inverse_sigmoid(previous)).sigmoid()
    return torch.cat([delta[..., :2] + inverse_sigmoid(previous), delta[..., 2:]], -1).sigmoid()


def select_top(scores: Tensor, count: int, *values: Tensor) -> list[Tensor]:
    """The `count` best positions by (B, N) `scores`: each (B, N, k) value gathered there."""
    top = torch.topk(scores, count, dim=1).indices
    return [torch.gather(v, 1, top.unsqueeze(-1).expand(-1, -1, v.shape[-1])) for v in values]


class TextFusion(nn.Module):
    """Cross-attention from visual positions (queries) to text tokens (keys/values), with a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, visual: Tensor, text: Tensor, text_padding: Tensor) -> Tensor:
        """visual (B, N, d), text (B, L, d), text_padding (B, L) True at padding -> (B, N, d)."""
        fused, _ = self.attention(visual, text, text, key_padding_mask=text_padding, need_weights=False)
        return self.norm(visual + fused)


def fused_levels(
    maps: Sequence[Tensor],
    input_proj: Sequence[nn.Module],
    fusion: Sequence[TextFusion],
    level_embed: Tensor,
    text: Tensor,
    text_padding: Tensor,
) -> Levels:
    """Backbone maps projected to d, each made language-aware by its `TextFusion` over `text` (B, L, d) (True in
    `text_padding` at padding), with sine positions plus the level embedding, flattened into one sequence."""
    tokens, positions, shapes = [], [], []
    for level, feature in enumerate(maps):
        source = input_proj[level](feature)
        batch, dim, height, width = source.shape
        tokens.append(fusion[level](source.flatten(2).transpose(1, 2), text.to(source.dtype), text_padding))
        position = sine_position_2d(height, width, dim, source.device, source.dtype) + level_embed[level]
        positions.append(position.unsqueeze(0).expand(batch, -1, -1))
        shapes.append((height, width))
    return Levels.of(tokens, positions, shapes)


@dataclass
class Proposals:
    """Two-stage query selection: the encoder positions that score best become the decoder's queries.

    Attributes:
        logits: (B, Q, C) the selected positions' class logits; boxes: (B, Q, 4) their boxes (for the loss).
        reference: (B, Q, 4) the decoder's starting boxes (no gradient); target, query_pos: (B, Q, d) its queries.
    """

    logits: Tensor
    boxes: Tensor
    reference: Tensor
    target: Tensor
    query_pos: Tensor

    @classmethod
    def select(
        cls,
        memory: Tensor,
        levels: Levels,
        count: int,
        proposal_proj: nn.Module,
        classify: Callable[[Tensor], Tensor],
        box_head: nn.Module,
        query_from_proposal: nn.Module,
    ) -> Proposals:
        """Score every encoder position (`classify`: (B, S, d) -> (B, S, C)), keep the `count` best."""
        dim = memory.shape[-1]
        features = proposal_proj(memory)
        all_logits = classify(features)
        all_coords = box_head(features) + grid_proposals(levels.shapes, memory.device, memory.dtype)
        logits, coords = select_top(all_logits.max(-1).values, min(count, memory.shape[1]), all_logits, all_coords)
        query_pos, target = query_from_proposal(box_sine(coords.detach(), dim // 2)).split(dim, dim=-1)
        boxes = coords.sigmoid()
        return cls(logits, boxes, boxes.detach(), target, query_pos)


def layer_predictions(
    decoded, reference: Tensor, box_heads: Sequence[nn.Module], classify: Callable[[int, Tensor], Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """Each decoder layer's class logits (`classify(layer, hidden)`) and boxes, refined from the reference the
    layer read."""
    layer_logits, layer_boxes = [], []
    for layer in range(decoded.intermediate_hidden_states.shape[1]):
        hidden = decoded.intermediate_hidden_states[:, layer]
        previous = reference if layer == 0 else decoded.intermediate_reference_points[:, layer - 1]
        layer_boxes.append(refined_boxes(box_heads[layer](hidden), previous))
        layer_logits.append(classify(layer, hidden))
    return layer_logits, layer_boxes


__all__ = [
    "DeformableDetrDecoder",
    "DeformableDetrEncoder",
    "Levels",
    "Proposals",
    "TextFusion",
    "box_sine",
    "deformable_config",
    "fused_levels",
    "grid_proposals",
    "inverse_sigmoid",
    "layer_predictions",
    "refined_boxes",
    "select_top",
]
