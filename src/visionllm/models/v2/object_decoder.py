"""The object decoder: Grounding-DINO-like detection, grounding and instance / interactive segmentation, its
categories given by the LLM's super-link queries.

Its own backbone (ResNet or Swin) reads the image at strides 4 to 32. The stride 8, 16 and 32 maps are projected to
d, made category-aware by a cross-attention to the categories' features (as Grounding DINO fuses image and text), and
pass a deformable encoder. Two-stage query selection takes the encoder positions that best match a category as the
decoder's queries and starting boxes; the decoder refines the boxes layer by layer. Queries are classified by their
dot product with the categories' features (`heads.CategoryHead`), so the category set is whatever the LLM routed.
Masks: each final query's embedding dotted with stride-4 pixel features (the stride-4 backbone map plus the
upsampled stride-8 memory, as Mask DINO builds them).

Losses: the DETR set loss (focal, L1, GIoU after Hungarian matching) on every decoder layer and on the selected
proposals; mask BCE and dice on the last layer's matched queries, against the targets resized to stride 4; with
`denoising_groups`, DINO's contrastive denoising loss on jittered target boxes (`denoising`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMLPPredictionHead

from visionllm.config import BackboneConfig, ConfigError
from visionllm.models.common.backbone import Backbone
from visionllm.models.common.checkpoint import load_renamed
from visionllm.models.common.deformable import (
    DeformableDetrDecoder,
    DeformableDetrEncoder,
    Levels,
    Proposals,
    TextFusion,
    box_sine,
    deformable_config,
    fused_levels,
    inverse_sigmoid,
    layer_predictions,
)
from visionllm.models.common.detr_loss import Matches, mask_losses, matched_set_loss
from visionllm.models.v2.denoising import DenoisingQueries, denoising_loss, denoising_queries
from visionllm.models.v2.heads import CategoryHead, MaskHead, upsample_masks
from visionllm.ops.tensor_boxes import cxcywh_to_xyxy

DETECTOR_NAMES = (("backbone.", "backbone."), ("tokenizer.class_head.", "class_proj."), ("tokenizer.", ""))
"""A v1 checkpoint's weight names -> this decoder's (first matching prefix)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _swin_t() -> BackboneConfig:
    return BackboneConfig(kind="swin", embedding_size=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24])


@dataclass
class ObjectDecoderConfig:
    """The object decoder (defaults: the paper's Swin-T Grounding-DINO layout).

    Attributes:
        backbone: its own image backbone, read at strides 4, 8, 16, 32.
        image_size: the side it reads the image at.
        d_model, num_queries, encoder_layers, decoder_layers, num_heads, num_points, ffn_dim, fusion_heads: the
            deformable transformer.
        class_weight, l1_weight, giou_weight, mask_weight, dice_weight, focal_alpha: loss weights (the first three
            also the matching costs).
        denoising_groups: contrastive denoising groups in training (DINO; 0: none; `denoising` module).
        box_noise, label_noise: how far a positive denoising query's corners move (a share of the box's half size;
            negatives move one to two times that), and how often its category is swapped for another.
        phrase_separation: in training, the weight of a loss that keeps apart the category features of different
            phrases (their cosine above `SEPARATION_MARGIN` is penalised). A small LLM learned from scratch gives
            near-identical query states to similar names (circle, square, hexagon), and a decoder that cannot tell
            their features apart gets no signal to tell their shapes apart; 0: none (the paper's pretrained LLM).
        init_detector: a trained detector's checkpoint folder that a training stage attaching this decoder starts
            it from, where names and shapes match (`load_detector`): the paper starts its decoders from trained
            Grounding DINO weights; here, a VisionLLM v1 model's backbone and deformable transformer. Read when a
            stage attaches the decoder, never when a trained model loads. None: a fresh decoder.
    """

    backbone: BackboneConfig = field(default_factory=_swin_t)
    image_size: int = 1024
    d_model: int = 256
    num_queries: int = 900
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 2048
    fusion_heads: int = 8
    class_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    focal_alpha: float = 0.25
    denoising_groups: int = 0
    box_noise: float = 0.4
    label_noise: float = 0.2
    phrase_separation: float = 0.0
    init_detector: str | None = None

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"objects.image_size must be a multiple of 32, not {self.image_size}")
        if self.d_model % self.num_heads or self.d_model % self.fusion_heads:
            raise ConfigError("objects.d_model must be a multiple of num_heads and fusion_heads")
        if self.denoising_groups < 0 or not 0 < self.box_noise <= 1 or not 0 <= self.label_noise <= 1:
            raise ConfigError("objects.denoising_groups must be >= 0, box_noise in (0, 1], label_noise in [0, 1]")
        if self.phrase_separation < 0:
            raise ConfigError(f"objects.phrase_separation must be >= 0, not {self.phrase_separation}")


@dataclass
class ObjectTargets:
    """One image's objects for the routed categories.

    Attributes:
        boxes: (T, 4) cx, cy, w, h in [0, 1].
        classes: (T,) the index of each object's category among the image's routed categories.
        masks: (T, H, W) 0/1 masks at any resolution, or None (no mask loss).
    """

    boxes: Tensor
    classes: Tensor
    masks: Tensor | None = None

    def to(self, device: torch.device | str) -> ObjectTargets:
        masks = self.masks.to(device) if self.masks is not None else None
        return ObjectTargets(self.boxes.to(device), self.classes.to(device), masks)


@dataclass
class ObjectOutput:
    """The decoder's predictions for B images.

    Attributes:
        boxes: (B, Q, 4) final boxes, cx cy w h in [0, 1].
        class_logits: (B, Q, C) logits of each query against each routed category.
        valid: (B, C) which categories exist per image.
        mask_logits: (B, Q, H/4, W/4).
        hidden: (B, Q, d) the final query states.
        layer_logits, layer_boxes: per decoder layer, for the auxiliary losses.
        proposal_logits, proposal_boxes: the selected encoder proposals.
        memory, levels: the encoder's memory and its layout (what the keypoint decoder reads).
        denoising: in training with `denoising_groups`, the denoising queries and their per-layer logits and boxes.
    """

    boxes: Tensor
    class_logits: Tensor
    valid: Tensor
    mask_logits: Tensor
    hidden: Tensor
    layer_logits: list[Tensor]
    layer_boxes: list[Tensor]
    proposal_logits: Tensor
    proposal_boxes: Tensor
    memory: Tensor
    levels: Levels
    denoising: tuple[DenoisingQueries, list[Tensor], list[Tensor]] | None = None


@dataclass
class Detected:
    """One image's detections, best first.

    Attributes:
        boxes: (N, 4) x1, y1, x2, y2 in pixels of the image.
        scores: (N,) in [0, 1].
        categories: (N,) the index of the routed category.
        masks: (N, H, W) bool at the image's size, or None when not asked for.
        queries: (N,) the decoder query each came from.
    """

    boxes: Tensor
    scores: Tensor
    categories: Tensor
    masks: Tensor | None
    queries: Tensor

    def select(self, index: Tensor | slice) -> Detected:
        """The detections at `index`, in its order."""
        masks = self.masks[index] if self.masks is not None else None
        return Detected(self.boxes[index], self.scores[index], self.categories[index], masks, self.queries[index])


class ObjectDecoder(nn.Module):
    """Images + per-image routed categories (LLM query states) -> boxes, classes, masks.

    Args:
        config: the decoder's config.
        llm_width: the LLM's hidden width (the query states' width).
        load_weights: load the backbone's pretrained weights when the config names them.
    """

    def __init__(self, config: ObjectDecoderConfig, llm_width: int, load_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.backbone = Backbone(config.backbone, load_weights, out_features=["stage1", "stage2", "stage3", "stage4"])
        channels = self.backbone.channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(min(32, d // 4), d)) for c in channels[1:]
        )
        self.categories = CategoryHead(llm_width, d)
        self.fusion = nn.ModuleList(TextFusion(d, config.fusion_heads) for _ in channels[1:])
        self.level_embed = nn.Parameter(torch.randn(len(channels) - 1, d) * 0.02)
        detr = deformable_config(
            d,
            config.encoder_layers,
            config.decoder_layers,
            config.num_heads,
            config.ffn_dim,
            config.num_points,
            len(channels) - 1,
            config.num_queries,
        )
        self.encoder = DeformableDetrEncoder(detr)
        self.decoder = DeformableDetrDecoder(detr)
        heads = config.decoder_layers + 1  # every layer and the proposals
        self.class_proj = nn.ModuleList(nn.Linear(d, d) for _ in range(heads))
        self.box_head = nn.ModuleList(DeformableDetrMLPPredictionHead(d, d, 4, 3) for _ in range(heads))
        for head in self.box_head:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        self.decoder.bbox_embed = self.box_head[: config.decoder_layers]
        self.proposal_proj = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
        self.query_from_proposal = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.LayerNorm(2 * d))
        self.memory_to_pixels = nn.Conv2d(d, d, kernel_size=1)
        self.masks = MaskHead(d, channels[0])
        self.label_embed = nn.Linear(d, d) if config.denoising_groups else None

    def load_detector(self, folder: str | Path) -> tuple[list[str], list[str]]:
        """Start from a trained detector: the weights of a checkpoint in VisionLLM v1's layout (`backbone.*`, and its
        image tokenizer's `tokenizer.*`, whose class projections are this decoder's `class_proj`) where their names
        and shapes match this decoder's.

        Returns:
            The names of this decoder's weights loaded, and of those left as they were.

        Raises:
            CheckpointError: no readable model.safetensors in `folder`, or nothing in it fits this decoder.
        """
        return load_renamed(self, folder, DETECTOR_NAMES, "objects.init_detector")

    def pixels(self, clip_pixels: Tensor, clip_mean: Tensor, clip_std: Tensor) -> Tensor:
        """The chat model's normalised pixels re-normalised for this backbone, at its image size."""
        rgb = clip_pixels * clip_std.view(1, 3, 1, 1).to(clip_pixels) + clip_mean.view(1, 3, 1, 1).to(clip_pixels)
        side = self.config.image_size
        if rgb.shape[-1] != side or rgb.shape[-2] != side:
            rgb = F.interpolate(rgb, size=(side, side), mode="bilinear", align_corners=False)
        return (rgb - self.mean.to(rgb)) / self.std.to(rgb)

    def _class_logits(self, head: int, hidden: Tensor, features: Tensor, valid: Tensor) -> Tensor:
        return self.categories.logits(self.class_proj[head](hidden), features, valid)

    def forward(
        self,
        pixel_values: Tensor,
        conditions: Sequence[Sequence[Tensor]],
        targets: Sequence[ObjectTargets] | None = None,
    ) -> ObjectOutput:
        """Decode B images.

        Args:
            pixel_values: (B, 3, S, S) at this decoder's normalisation and size (`pixels`).
            conditions: per image, one (n, llm_width) tensor of query states per routed category (at least one).
            targets: in training, each image's objects: with `denoising_groups`, their jittered boxes are decoded
                too (`denoising`).
        """
        if any(len(c) == 0 for c in conditions):
            raise ValueError("every image given to the object decoder needs at least one routed category")
        d = self.config.d_model
        features, valid = self.categories.categories(conditions)
        padding = ~valid
        maps = self.backbone(pixel_values)
        levels = fused_levels(maps[1:], self.input_proj, self.fusion, self.level_embed, features, padding)
        memory = levels.encode(self.encoder)
        proposals = Proposals.select(
            memory,
            levels,
            self.config.num_queries,
            self.proposal_proj,
            lambda hidden: self._class_logits(-1, hidden, features, valid),
            self.box_head[-1],
            self.query_from_proposal,
        )
        decoded = levels.decode(self.decoder, proposals.target, proposals.query_pos, proposals.reference, memory)
        layer_logits, layer_boxes = layer_predictions(
            decoded, proposals.reference, self.box_head, lambda layer, h: self._class_logits(layer, h, features, valid)
        )
        height, width = levels.shapes[0]
        stride8 = memory[:, : height * width].transpose(1, 2).reshape(len(memory), d, height, width)
        stride4 = maps[0]
        extra = F.interpolate(self.memory_to_pixels(stride8), size=stride4.shape[-2:], mode="bilinear")
        mask_logits = self.masks(decoded.last_hidden_state, stride4, extra)
        denoising = None
        if self.training and self.label_embed is not None and targets is not None:
            denoising = self._denoise(features, valid, memory, levels, targets)
        return ObjectOutput(
            boxes=layer_boxes[-1],
            class_logits=layer_logits[-1],
            valid=valid,
            mask_logits=mask_logits,
            hidden=decoded.last_hidden_state,
            layer_logits=layer_logits,
            layer_boxes=layer_boxes,
            proposal_logits=proposals.logits,
            proposal_boxes=proposals.boxes,
            memory=memory,
            levels=levels,
            denoising=denoising,
        )

    def _denoise(
        self, features: Tensor, valid: Tensor, memory: Tensor, levels: Levels, targets: Sequence[ObjectTargets]
    ) -> tuple[DenoisingQueries, list[Tensor], list[Tensor]] | None:
        """The denoising queries of these targets through the decoder, one row per (image, group)."""
        c, d = self.config, self.config.d_model
        counts = valid.sum(1).tolist()
        queries = denoising_queries(
            [t.boxes for t in targets],
            [t.classes for t in targets],
            counts,
            c.denoising_groups,
            c.box_noise,
            c.label_noise,
        )
        if queries is None:
            return None
        device = memory.device
        rows = queries.rows.to(device)
        reference = queries.reference.to(device, memory.dtype)
        query_pos, target = self.query_from_proposal(box_sine(inverse_sigmoid(reference), d // 2)).split(d, dim=-1)
        carried = features[rows[:, None], queries.classes.to(device)]  # (R, N, d) each query's category feature
        target = (target + self.label_embed(carried.to(target.dtype))) * queries.real.to(device)[..., None]
        chosen = levels.select(rows)
        decoded = chosen.decode(self.decoder, target, query_pos, reference, memory[rows])
        row_features, row_valid = features[rows], valid[rows]
        logits, boxes = layer_predictions(
            decoded, reference, self.box_head, lambda layer, h: self._class_logits(layer, h, row_features, row_valid)
        )
        return queries, logits, boxes

    def loss(self, output: ObjectOutput, targets: Sequence[ObjectTargets]) -> tuple[dict[str, Tensor], Matches]:
        """The set loss on every layer and the proposals, and the mask losses on the last layer's matches.

        Returns:
            {"boxes": ..., "masks": ...} and the last layer's matches.
        """
        c = self.config
        weights = (c.class_weight, c.l1_weight, c.giou_weight, c.focal_alpha)
        boxes = [t.boxes for t in targets]
        classes = [t.classes for t in targets]
        pairs = [*zip(output.layer_logits, output.layer_boxes, strict=True)]
        pairs.append((output.proposal_logits, output.proposal_boxes))
        total = output.boxes.new_zeros((), dtype=torch.float32)
        matches: Matches | None = None
        for index, (logits, predicted) in enumerate(pairs):
            loss, found = matched_set_loss(logits, output.valid, predicted, boxes, classes, *weights)
            total = total + loss
            if index == len(pairs) - 2:
                matches = found
        assert matches is not None
        image, rows, cols = matches
        with_masks = torch.tensor([targets[i].masks is not None for i in image.tolist()], dtype=torch.bool)
        mask_loss = output.mask_logits.new_zeros((), dtype=torch.float32)
        if with_masks.any():
            keep = with_masks.to(image.device)
            image, rows, cols = image[keep], rows[keep], cols[keep]
            size = output.mask_logits.shape[-2:]
            wanted = torch.stack(
                [_resized(targets[i].masks[j], size) for i, j in zip(image.tolist(), cols.tolist(), strict=True)]
            )
            bce, dice = mask_losses(output.mask_logits[image, rows], wanted.to(output.mask_logits.device))
            mask_loss = c.mask_weight * bce + c.dice_weight * dice
        losses = {"boxes": total / len(pairs), "masks": mask_loss}
        if output.denoising is not None:
            queries, layer_logits, layer_boxes = output.denoising
            row_valid = output.valid[queries.rows.to(output.valid.device)]
            losses["denoising"] = denoising_loss(layer_logits, layer_boxes, queries, row_valid, *weights)
        return losses, matches

    @torch.no_grad()
    def detect(
        self,
        output: ObjectOutput,
        image: int,
        size_wh: tuple[int, int],
        top_k: int = 100,
        min_score: float = 0.0,
        masks: bool = True,
    ) -> Detected:
        """Image `image`'s best (query, category) pairs, Deformable DETR's post-processing, in pixels of an image
        of `size_wh`; with its masks at that size when `masks` (their upsampling is most of the cost)."""
        probs = output.class_logits[image].float().sigmoid().masked_fill(~output.valid[image][None, :], -1.0)
        scores, index = probs.flatten().topk(min(top_k, probs.numel()))
        keep = scores >= max(min_score, 0.0)  # never a category the image did not route
        scores, index = scores[keep], index[keep]
        queries, categories = index // probs.shape[-1], index % probs.shape[-1]
        width, height = size_wh
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=scores.device)
        boxes = cxcywh_to_xyxy(output.boxes[image, queries].float()) * scale
        found = upsample_masks(output.mask_logits[image, queries].float(), (height, width)) > 0 if masks else None
        return Detected(boxes, scores, categories, found, queries)


def _resized(mask: Tensor, size: torch.Size) -> Tensor:
    """A 0/1 mask as the share of each cell it covers at `size` (soft targets: small objects stay visible)."""
    return F.adaptive_avg_pool2d(mask.float()[None, None], tuple(size))[0, 0]
