"""The LLM side of v1: image tokens in, answers out, with output-format-as-query decoding.

Image tokens (embedding e_k, box l_k) are projected into the LLM's embedding space and scattered
into the M <image> placeholders. Structured answers are decoded by K slot groups appended after
the format header: a slot's query tokens are the format tokens (<cls> <x1> <y1> ...) plus the
projection of the image token the slot is anchored at. Each group attends to the prefix (instruction,
image tokens, header) and causally to its own tokens only, so all groups decode in one forward pass
and a slot's result does not depend on the other slots. The <cls> position classifies over the
bound class tokens plus <no-obj>; each coordinate position over the location tokens (plus <p-inv>
for keypoints). Coordinates are offsets from the slot's anchor (the centre of l_k) in bins of W / R.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionllm.config import DecoderConfig, LLMConfig
from visionllm.formats import tokens as tk
from visionllm.formats.codec import OutputFormat, OutputKind
from visionllm.formats.tokens import CodecVocabulary
from visionllm.models.common.backbone import sine_embed
from visionllm.models.common.llm import CausalLanguageModel
from visionllm.models.common.matcher import hungarian_match
from visionllm.ops.tensor_boxes import elementwise_generalized_iou, generalized_iou


@dataclass
class SlotTargets:
    """What one sample's slots should produce.

    Attributes:
        class_index: (T,) index into the bound classes.
        points: (T, N, 2) target points, (x, y) as fractions of the image width and height.
        visible: (T, N) bool; invisible keypoints are trained towards <p-inv>.
    """

    class_index: Tensor
    points: Tensor
    visible: Tensor


@dataclass
class SlotOutputs:
    """Slot logits of one sample.

    Attributes:
        class_logits: (K, num_bound + 1), the last column is <no-obj>.
        coord_logits: (K, 2N, 2R + 1 [+ 1]) over location bins (and <p-inv> for keypoints).
        anchors: (K, 2) anchor points as fractions of the image.
        token_index: (K,) the image token each slot is anchored at.
    """

    class_logits: Tensor
    coord_logits: Tensor
    anchors: Tensor
    token_index: Tensor


class LanguageDecoder(CausalLanguageModel):
    """v1's side of the LLM (`CausalLanguageModel`): the image-token projection, the class evidence and the slot
    heads.

    Args:
        llm_config: which LLM.
        decoder_config: codec sizes and slot settings.
        vocab: the codec vocabulary (ids of the added tokens in the tokenizer).
        vocab_size: the tokenizer's length (with the added tokens).
        token_dim: width of the image tokens.
        default_phrase_ids: the LLM's token ids of each of the model's default class phrases.
        load_weights: load pretrained LLM weights (False when a checkpoint will overwrite them).
    """

    def __init__(
        self,
        llm_config: LLMConfig,
        decoder_config: DecoderConfig,
        vocab: CodecVocabulary,
        vocab_size: int,
        token_dim: int,
        default_phrase_ids: Sequence[Sequence[int]] = (),
        load_weights: bool = True,
    ) -> None:
        super().__init__(llm_config, vocab, vocab_size, load_weights)
        self.config = decoder_config
        d = self.hidden_size
        self.image_proj = nn.Sequential(nn.Linear(token_dim, d), nn.GELU(), nn.Linear(d, d))
        self.box_proj = nn.Linear(4 * 32, d)
        r = decoder_config.coord_range
        self.location_ids = torch.tensor(vocab.encode(tk.loc_token(v) for v in range(-r, r + 1)))
        self.class_ids = torch.tensor(vocab.encode(tk.class_token(i) for i in range(decoder_config.max_classes)))
        self.no_object_id = vocab.token_to_id(tk.NO_OBJECT)
        self.invisible_id = vocab.token_to_id(tk.INVISIBLE)
        self.image_id = vocab.token_to_id(tk.IMAGE)
        width = max([1, *(len(ids) for ids in default_phrase_ids)])
        rows = [list(ids) + [-1] * (width - len(ids)) for ids in default_phrase_ids]
        self.default_phrase_mask = torch.tensor(rows, dtype=torch.long, device="cpu") >= 0
        self.default_phrase_ids = torch.tensor(rows, dtype=torch.long, device="cpu").clamp(min=0)

    # -- pieces ---------------------------------------------------------------------------------

    def class_rows(self, num_classes: int, has_classes: Tensor) -> Tensor:
        """Each class's embedding in the LLM's space, per sample (B, C, D).

        An instruction that binds classes names them by class token: row c is E[<c_c>]. One without (captioning,
        VQA) is read against the model's default classes, named in words: row c is the mean of the embeddings of
        default phrase c's words ("red circle" -> (E[red] + E[circle]) / 2), so that the LLM can say what it sees.
        Without default classes those samples get zero rows.
        """
        table = self.backbone_lm.get_input_embeddings().weight
        bound = table[self.class_ids[:num_classes].to(table.device)]  # (C, D)
        own = torch.zeros_like(bound)
        if len(self.default_phrase_ids):
            ids = self.default_phrase_ids.to(table.device)
            words = self.default_phrase_mask.to(table.device, table.dtype)
            phrases = (table[ids] * words[..., None]).sum(1) / words.sum(1, keepdim=True)  # (C', D)
            own = F.pad(phrases[:num_classes], (0, 0, 0, max(0, num_classes - len(phrases))))
        return torch.where(has_classes[:, None, None], bound[None], own[None])

    def class_evidence(self, class_probs: Tensor, bound: Tensor) -> Tensor:
        """Each token's class evidence in the LLM's space (B, M, D): s * sum_c p_kc * row_c (`class_rows`,
        s = `evidence_scale`); for samples without bound classes, with `default_evidence: top1`, only each token's
        most probable default class counts.

        Args:
            class_probs: (B, M, C) each token's probability of each class (0 for duplicates and absent classes).
            bound: (B,) whether the sample's instruction binds classes.
        """
        if self.config.default_evidence == "top1":
            top = F.one_hot(class_probs.argmax(-1), class_probs.shape[-1]).to(class_probs.dtype)
            class_probs = torch.where(bound[:, None, None], class_probs, class_probs * top)
        rows = self.class_rows(class_probs.shape[-1], bound)
        return self.config.evidence_scale * (class_probs.to(rows.dtype) @ rows)

    def embed_image_tokens(
        self, embeddings: Tensor, boxes: Tensor, class_probs: Tensor | None = None, bound: Tensor | None = None
    ) -> Tensor:
        """Image tokens in the LLM's embedding space.

        Args:
            embeddings: (B, M, d_tok) token embeddings e_k.
            boxes: (B, M, 4) token boxes l_k, cxcywh in [0, 1].
            class_probs: (B, M, C) each token's probability of each class (0 for duplicates and absent classes).
            bound: (B,) whether each sample's instruction binds classes (`class_evidence`).

        Returns:
            (B, M, D): MLP(e_k) + Linear(sine(l_k)) + the token's class evidence (`class_evidence`).
        """
        tokens = self.image_proj(embeddings) + self.box_proj(sine_embed(boxes, 32).to(embeddings.dtype))
        if class_probs is None or bound is None:
            return tokens
        return tokens + self.class_evidence(class_probs, bound).to(tokens.dtype)

    def input_embeddings(self, input_ids: Tensor, image_tokens: Tensor) -> Tensor:
        """Token embeddings with the image tokens scattered into the <image> placeholders.

        Raises:
            PlaceholderMismatch: a sample's placeholder count differs from its number of image tokens.
        """
        return self.fill_placeholders(self.embed_ids(input_ids), input_ids, self.image_id, image_tokens)

    def slot_logits(
        self, hidden: Tensor, fmt: OutputFormat, num_bound: int, prior: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Class and coordinate logits of slot hidden states (K, slot_length, D).

        Args:
            prior: (K, num_bound) the anchor tokens' class logits from the tokenizer, added to the bound classes'
                logits (the LLM's no-object logit decides against them).
        """
        weight = self.head_weight()
        class_rows = torch.cat([self.class_ids[:num_bound], torch.tensor([self.no_object_id])]).to(weight.device)
        class_logits = hidden[:, 0] @ weight[class_rows].T
        if prior is not None:
            class_logits = class_logits + F.pad(prior.to(class_logits.dtype), (0, 1))
        rows = self.location_ids.to(weight.device)
        if fmt.kind is OutputKind.KEYPOINTS:
            rows = torch.cat([rows, torch.tensor([self.invisible_id], device=weight.device)])
        coord_logits = hidden[:, 1:] @ weight[rows].T
        return class_logits, coord_logits

    # -- losses ----------------------------------------------------------------------------------

    def slot_loss(self, outputs: SlotOutputs, targets: SlotTargets, fmt: OutputFormat) -> tuple[Tensor, dict]:
        """Matching loss of one sample's slots (section 1.3a of the spec).

        Matching cost: -p(class) + coord_cost * L1 of expected coordinates (+ giou_cost * -GIoU for boxes).
        Matched slots: cross-entropy on the class, soft two-bin cross-entropy on each coordinate and L1 on its
        expected value; unmatched slots: <no-obj> with weight `no_object_weight`.
        """
        c = self.config
        r = c.coord_range
        num_slots, num_classes = outputs.class_logits.shape[0], outputs.class_logits.shape[1] - 1
        log_p_class = outputs.class_logits.float().log_softmax(-1)
        coord_logits = outputs.coord_logits.float()
        bins = coord_logits[..., : 2 * r + 1].softmax(-1) @ torch.arange(-r, r + 1, device=coord_logits.device).float()
        expected = outputs.anchors.repeat(1, fmt.num_points).view(num_slots, -1) + bins / r  # (K, 2N) fractions
        target_points = targets.points.reshape(len(targets.points), -1).to(expected)  # (T, 2N)
        visible = targets.visible.repeat_interleave(2, dim=1).to(expected.device)  # (T, 2N)
        t = len(target_points)
        with torch.no_grad():
            cost = -log_p_class[:, targets.class_index].exp() if t else expected.new_zeros(num_slots, 0)
            if t:
                diff = (expected[:, None, :] - target_points[None]).abs() * visible[None]
                cost = cost + c.coord_cost * diff.sum(-1) / visible.sum(-1).clamp(min=1)[None]
                if fmt.kind is OutputKind.BOXES:
                    cost = cost - c.giou_cost * generalized_iou(_corners(expected), _corners(target_points))
        rows, cols = hungarian_match(cost)
        rows, cols = rows.to(expected.device), cols.to(expected.device)
        class_target = torch.full((num_slots,), num_classes, device=expected.device, dtype=torch.long)
        class_target[rows] = targets.class_index.to(expected.device)[cols]
        weights = torch.ones(num_classes + 1, device=expected.device)
        weights[-1] = c.no_object_weight
        class_loss = F.nll_loss(log_p_class, class_target, weight=weights)
        coord_ce = expected.new_zeros(())
        coord_l1 = expected.new_zeros(())
        giou = expected.new_zeros(())
        if len(rows):
            matched_logits = coord_logits[rows]  # (P, 2N, bins)
            wanted = target_points[cols]
            shown = visible[cols]
            offsets = (wanted - outputs.anchors[rows].repeat(1, fmt.num_points)) * r
            soft = two_bin_targets(offsets.clamp(-r, r), r, coord_logits.shape[-1])
            if fmt.kind is OutputKind.KEYPOINTS:
                soft[~shown] = 0.0
                soft[..., -1][~shown] = 1.0
            coord_ce = -(soft * matched_logits.log_softmax(-1)).sum(-1).mean()
            if shown.any():
                coord_l1 = ((expected[rows] - wanted).abs() * shown).sum() / shown.sum()
            if fmt.kind is OutputKind.BOXES:
                giou = (1 - elementwise_generalized_iou(_corners(expected[rows]), _corners(wanted))).mean()
        loss = class_loss + coord_ce + c.coord_l1_weight * coord_l1 + c.giou_cost * giou
        return loss, {"slot_class": class_loss.detach(), "slot_coord": coord_ce.detach(), "slot_l1": coord_l1.detach()}


def _corners(points: Tensor) -> Tensor:
    """(K, 4) box points (x1, y1, x2, y2) in any order -> proper corners."""
    return torch.stack(
        [
            torch.minimum(points[:, 0], points[:, 2]),
            torch.minimum(points[:, 1], points[:, 3]),
            torch.maximum(points[:, 0], points[:, 2]),
            torch.maximum(points[:, 1], points[:, 3]),
        ],
        dim=-1,
    )


def two_bin_targets(offsets: Tensor, coord_range: int, num_bins: int) -> Tensor:
    """Soft targets over bins: the two nearest bins of each offset, linearly weighted."""
    position = offsets + coord_range  # in [0, 2R]
    low = position.floor().clamp(0, 2 * coord_range)
    high = (low + 1).clamp(max=2 * coord_range)
    w_high = (position - low).clamp(0, 1)
    soft = torch.zeros(*offsets.shape, num_bins, device=offsets.device)
    soft.scatter_add_(-1, low.long().unsqueeze(-1), (1 - w_high).unsqueeze(-1))
    soft.scatter_add_(-1, high.long().unsqueeze(-1), w_high.unsqueeze(-1))
    return soft


def select_anchor_tokens(logits: Tensor, num_slots: int) -> Tensor:
    """(B, M) objectness -> (B, K) indices of the K most object-like image tokens, best first."""
    return torch.topk(logits, min(num_slots, logits.shape[1]), dim=1).indices
