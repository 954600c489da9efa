"""The language-guided image tokenizer (VisionLLM section 3.2).

Backbone features at 3 scales are projected to d_model; each scale is made language-aware by a
cross-attention from every visual position to the instruction's text tokens; a Deformable DETR
encoder/decoder (transformers' modules, pure PyTorch multi-scale deformable attention) then turns
them into M image tokens: an embedding e_i (d_model) and a location l_i (a box, cx cy w h in [0, 1]).

The tokenizer is supervised as a detector of the objects the instruction is about (L_tok: matching
loss with focal class, L1 and GIoU). Its classes are the instruction's own: a token's class logits
are the similarity of its embedding to each bound class phrase, read from the text encoder's states
over that phrase (as open-vocabulary detectors such as Grounding DINO do); an instruction without a
class set (captioning, VQA) is tokenized against the model's own default class set (or, without one,
one learned "object" class). Convergence aids, all from Deformable DETR: two-stage
query initialisation from the encoder's top proposals and iterative box refinement, each with its
own loss (aux losses on every decoder layer and on the proposals).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMLPPredictionHead

from visionllm.config import TokenizerConfig
from visionllm.models.common.deformable import (
    DeformableDetrDecoder,
    DeformableDetrEncoder,
    Proposals,
    TextFusion,
    deformable_config,
    fused_levels,
    layer_predictions,
)
from visionllm.models.common.detr_loss import matched_set_loss
from visionllm.ops.tensor_boxes import cxcywh_to_xyxy, fast_nms_keep


@dataclass
class TokenizerOutput:
    """Image tokens and what L_tok needs.

    Attributes:
        embeddings: (B, M, d) token embeddings e_i.
        boxes: (B, M, 4) token locations l_i, (cx, cy, w, h) in [0, 1] of the image.
        logits: (B, M) objectness of each token: its best class logit.
        class_logits: (B, M, C) logits of each token against each class of its instruction.
        valid: (B, C) which classes exist for each image.
        layer_logits, layer_boxes: per decoder layer (B, M, C) / (B, M, 4), for the auxiliary losses.
        proposal_logits, proposal_boxes: the encoder proposals the queries started from (two-stage), or None.
    """

    embeddings: Tensor
    boxes: Tensor
    logits: Tensor
    class_logits: Tensor
    valid: Tensor
    layer_logits: list[Tensor]
    layer_boxes: list[Tensor]
    proposal_logits: Tensor | None = None
    proposal_boxes: Tensor | None = None


class LanguageGuidedTokenizer(nn.Module):
    """Backbone features + encoded instruction -> M image tokens."""

    num_levels = 3

    def __init__(self, config: TokenizerConfig, backbone_channels: Sequence[int], text_dim: int) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(min(32, d // 4), d)) for c in backbone_channels
        )
        self.text_proj = nn.Linear(text_dim, d)
        self.fusion = nn.ModuleList(TextFusion(d, config.fusion_heads) for _ in backbone_channels)
        self.level_embed = nn.Parameter(torch.randn(len(backbone_channels), d) * 0.02)
        detr_config = deformable_config(
            d,
            config.encoder_layers,
            config.decoder_layers,
            config.num_heads,
            config.ffn_dim,
            config.num_points,
            len(backbone_channels),
            config.num_queries,
            config.dropout,
        )
        self.encoder = DeformableDetrEncoder(detr_config)
        self.decoder = DeformableDetrDecoder(detr_config)
        heads = config.decoder_layers + (1 if config.two_stage else 0)
        self.class_head = nn.ModuleList(nn.Linear(d, d) for _ in range(heads))
        # Prior probability 0.01 per class, as in (Deformable) DETR with focal loss.
        self.class_bias = nn.Parameter(torch.full((heads,), -4.6))
        self.phrase_norm = nn.LayerNorm(d)
        if not config.default_classes:  # the class of an instruction without classes
            self.object_phrase = nn.Parameter(torch.randn(d) * 0.02)
        self.box_head = nn.ModuleList(DeformableDetrMLPPredictionHead(d, d, 4, 3) for _ in range(heads))
        for head in self.box_head:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        if config.box_refine:
            self.decoder.bbox_embed = self.box_head[: config.decoder_layers]
        if config.two_stage:
            self.proposal_proj = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
            self.query_from_proposal = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.LayerNorm(2 * d))
        else:
            self.query_embed = nn.Embedding(config.num_queries, 2 * d)
            self.reference_points = nn.Linear(d, 2)

    def phrases(
        self, text: Tensor, phrase_weights: Tensor, phrase_mask: Tensor, defaults: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Class features (B, C, d) from the projected text states and which classes exist (B, C).

        An instruction without classes gets the model's own class set (`defaults`: the encoded default-class
        text (1, L', text_dim) and its phrase weights (1, C', L')), or, without one, the learned "object" class.
        """
        features = self.phrase_norm(phrase_weights.to(text.dtype) @ text)
        no_classes = ~phrase_mask.any(1)
        valid = phrase_mask.clone()
        if not no_classes.any():
            return features, valid
        if defaults is None:
            first = torch.where(no_classes[:, None], self.object_phrase.to(features.dtype), features[:, 0])
            features = torch.cat([first[:, None], features[:, 1:]], 1)
            valid[:, 0] |= no_classes
            return features, valid
        default_text, default_weights = defaults
        own = self.phrase_norm(default_weights.to(text.dtype) @ self.text_proj(default_text))  # (1, C', d)
        width = max(features.shape[1], own.shape[1])
        features = nn.functional.pad(features, (0, 0, 0, width - features.shape[1]))
        own = nn.functional.pad(own, (0, 0, 0, width - own.shape[1]))
        own_valid = torch.arange(width, device=valid.device) < default_weights.shape[1]
        valid = nn.functional.pad(valid, (0, width - valid.shape[1]))
        features = torch.where(no_classes[:, None, None], own.to(features.dtype), features)
        valid = torch.where(no_classes[:, None], own_valid[None], valid)
        return features, valid

    def _class_logits(self, head: int, hidden: Tensor, phrases: Tensor, valid: Tensor) -> Tensor:
        logits = self.class_head[head](hidden) @ phrases.transpose(1, 2) / self.config.d_model**0.5
        logits = logits + self.class_bias[head]
        return logits.masked_fill(~valid[:, None, :], -1e4)

    def forward(
        self,
        features: Sequence[Tensor],
        text: Tensor,
        text_mask: Tensor,
        phrase_weights: Tensor,
        phrase_mask: Tensor,
        defaults: tuple[Tensor, Tensor] | None = None,
    ) -> TokenizerOutput:
        """Tokenize images.

        Args:
            features: 3 backbone maps (B, C_l, H_l, W_l).
            text: (B, L, text_dim) encoded instruction.
            text_mask: (B, L) 1 for real tokens, 0 for padding.
            phrase_weights: (B, C, L) averaging weights of each class phrase over the text tokens.
            phrase_mask: (B, C) which class phrases were found in the encoded text.
            defaults: the encoded text of the model's own class set and its phrase weights, for instructions that
                bind no classes (see `phrases`).
        """
        d = self.config.d_model
        text = self.text_proj(text)
        phrases, valid = self.phrases(text, phrase_weights, phrase_mask, defaults)
        padding = text_mask == 0
        levels = fused_levels(features, self.input_proj, self.fusion, self.level_embed, text, padding)
        memory = levels.encode(self.encoder)

        proposal_logits = proposal_boxes = None
        if self.config.two_stage:
            proposals = Proposals.select(
                memory,
                levels,
                self.config.num_queries,
                self.proposal_proj,
                lambda hidden: self._class_logits(-1, hidden, phrases, valid),
                self.box_head[-1],
                self.query_from_proposal,
            )
            proposal_logits, proposal_boxes = proposals.logits, proposals.boxes
            reference, query_pos, target = proposals.reference, proposals.query_pos, proposals.target
        else:
            batch = memory.shape[0]
            query_pos, target = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1).split(d, dim=-1)
            reference = self.reference_points(query_pos).sigmoid()

        decoded = levels.decode(self.decoder, target, query_pos, reference, memory)
        layer_logits, layer_boxes = layer_predictions(
            decoded, reference, self.box_head, lambda layer, h: self._class_logits(layer, h, phrases, valid)
        )
        return TokenizerOutput(
            embeddings=decoded.last_hidden_state,
            boxes=layer_boxes[-1],
            logits=layer_logits[-1].max(-1).values,
            class_logits=layer_logits[-1],
            valid=valid,
            layer_logits=layer_logits,
            layer_boxes=layer_boxes,
            proposal_logits=proposal_logits,
            proposal_boxes=proposal_boxes,
        )

    def loss(
        self, output: TokenizerOutput, targets_cxcywh: Sequence[Tensor], target_classes: Sequence[Tensor]
    ) -> Tensor:
        """L_tok: the set loss on every decoder layer and on the two-stage proposals.

        Args:
            output: the tokenizer's output.
            targets_cxcywh: per image, (T, 4) boxes of the objects the instruction is about, in [0, 1].
            target_classes: per image, (T,) their class indices in the instruction's class set (0 without one).
        """
        c = self.config
        pairs = list(zip(output.layer_logits, output.layer_boxes, strict=True))
        if output.proposal_logits is not None:
            pairs.append((output.proposal_logits, output.proposal_boxes))
        weights = (c.class_weight, c.l1_weight, c.giou_weight, c.focal_alpha)
        losses = [
            matched_set_loss(logits, output.valid, boxes, targets_cxcywh, target_classes, *weights)[0]
            for logits, boxes in pairs
        ]
        total = sum(losses)
        return total / len(pairs)


def arrange_tokens(
    tokens: TokenizerOutput, duplicate_iou: float, confident: float = 0.3
) -> tuple[TokenizerOutput, Tensor]:
    """The tokens as the LLM reads them: in reading order, with their class probabilities, duplicates silenced.

    A token's probability of a class is its sigmoid class score, set to 0 where another token overlaps it by
    more than `duplicate_iou` and scores higher for that class (several tokens on one object must not read as
    several objects). The order is left to right by box centre for tokens whose best remaining probability is
    at least `confident`, then the others, also left to right: position in the sequence tells where an object
    is and which tokens are objects. The order and the suppression are decisions (no gradient); the
    probabilities keep their gradient.

    Returns:
        The output with embeddings, boxes, logits and class_logits reordered (the per-layer outputs for the
        loss are left as they are), and the (B, M, C) class probabilities in the same order.
    """
    probs = tokens.class_logits.float().sigmoid() * tokens.valid[:, None, :]
    with torch.no_grad():
        keep = fast_nms_keep(cxcywh_to_xyxy(tokens.boxes.float()), probs, duplicate_iou)
    probs = probs * keep
    with torch.no_grad():
        key = tokens.boxes[..., 0].float() + 2.0 * (probs.amax(-1) < confident)
        order = key.argsort(dim=1, stable=True)

    def gather(values: Tensor) -> Tensor:
        index = order.view(*order.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
        return torch.gather(values, 1, index)

    arranged = dataclasses.replace(
        tokens,
        embeddings=gather(tokens.embeddings),
        boxes=gather(tokens.boxes),
        logits=gather(tokens.logits),
        class_logits=gather(tokens.class_logits),
    )
    return arranged, gather(probs)
