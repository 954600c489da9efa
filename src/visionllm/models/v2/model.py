"""VisionLLM v2: the chat model (CLIP encoder, bridge, region encoder, LLM) and its super links.

The LLM's input is a multi-turn conversation (`chat.build_chat`) whose `<image>` is expanded into the encoder's
g*g patch tokens (through the bridge), whose `<region>` placeholders hold one region vector each, and whose
routing tokens are followed by their family's queries. The task decoders read the queries' hidden states; they
join this model as they land (`SuperLink.conditions`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from visionllm.config import ConfigError
from visionllm.formats.keypoints import COCO_KEYPOINT_NAMES
from visionllm.formats.results import Decoded, Detections, GeneratedImage, SegmentationMap, TextAnswer
from visionllm.formats.task_table import Instruction, build_instruction, tasks_of_version
from visionllm.formats.tasks import Task
from visionllm.models.common.checkpoint import (
    CONFIG_NAME,
    TOKENIZER_DIR,
    read_config,
    read_tokenizer,
    read_weights,
    write_weights,
)
from visionllm.models.common.helpers import TaskHelpers
from visionllm.models.common.inputs import ImageInput, ProcessorError, normalise_image
from visionllm.models.common.llm import (
    CausalLanguageModel,
    PlaceholderMismatch,
    complete_special_tokens,
    configured_tokenizer,
)
from visionllm.models.common.sequence import (
    IGNORE,
    PAD,
    SEQUENCE,
    Segments,
    block_mask,
    pad_segments,
    slot_positions,
)
from visionllm.models.v2.cached_calls import UPSTREAM, CachedCall, CachedCallBatch, CachedCallStream
from visionllm.models.v2.chat import Turn, build_chat
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.heads import phrase_separation
from visionllm.models.v2.image_decoder import ImageDecoder
from visionllm.models.v2.keypoint_decoder import KeypointDecoder
from visionllm.models.v2.object_decoder import ObjectDecoder, ObjectOutput, ObjectTargets
from visionllm.models.v2.patch_labels import PatchLabelHead
from visionllm.models.v2.perception import (
    ROUTE,
    Plan,
    detections,
    keypoint_detections,
    plan,
    prompted,
    semantic_map,
)
from visionllm.models.v2.regions import RegionEncoder, RegionPrompt, prompt_mask
from visionllm.models.v2.superlink import (
    FAMILY_QUERIES,
    QUERY,
    REGION,
    ROUTES,
    V2_TOKENS,
    RouteCall,
    SuperLink,
)
from visionllm.models.v2.vision import Bridge, VisionEncoder
from visionllm.train.mix import MixConfig

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE = V2_TOKENS[0]
REGION_MARK = f"region1 {REGION}"
ImageLike = Image.Image | np.ndarray | str | Path


@dataclass
class Targets:
    """What a conversation's routed calls should produce (training).

    Attributes:
        objects: the objects of its object-decoder calls ([DET] [GRD] [SEG]); their classes index those calls in
            answer order. None: no decoder loss for this conversation.
        keypoints: (T, K, 3) for each object of `objects`, its points (x, y in [0, 1], visibility) in the order of
            the conversation's [POSE] calls; None without a keypoint loss.
        image: (3, S, S) in [-1, 1] at the image decoders' size: what its [GEN] or [EDIT] call should make (an
            edit's source is the conversation's image); None without an image loss.
    """

    objects: ObjectTargets | None = None
    keypoints: Tensor | None = None
    image: Tensor | None = None

    def to(self, device: torch.device | str) -> Targets:
        objects = self.objects.to(device) if self.objects is not None else None
        moved = [t.to(device) if t is not None else None for t in (self.keypoints, self.image)]
        return Targets(objects, *moved)


@dataclass
class ChatExample:
    """One conversation about one image, or about none (text-to-image).

    Attributes:
        image: the preprocessed image; None: the conversation shows none.
        turns: user and assistant turns, alternating from the user; `<image>` once, `<region>` per region.
        regions: the visual prompts, in the order of the `<region>` placeholders.
        targets: what its routed calls should produce, for training.
        patches: what covers each patch of the image (`patch_labels.patch_targets`), for training; None: unknown.
    """

    image: ImageInput | None
    turns: tuple[Turn, ...]
    regions: tuple[RegionPrompt, ...] = ()
    targets: Targets | None = None
    patches: Tensor | None = None


@dataclass
class Reply:
    """A generated reply.

    Attributes:
        text: the reply, routing tokens included (queries left out).
        calls: each routing token the reply wrote, with the LLM's hidden states at its queries (n, D): the
            condition its decoder reads.
        names: for each call, the words the reply wrote before it (its category or point name: "red circle").
        results: what the decoders made of the calls, by routing token (`chat` fills it): "[DET]" boxes,
            "[SEG]" boxes with masks, "[GRD]" the best box, "[POSE]" instances with their keypoints.
        images: the images its [GEN] and [EDIT] calls made, in order (`chat` fills it).
    """

    text: str
    calls: list[tuple[str, Tensor]]
    names: list[str] = field(default_factory=list)
    results: dict[str, Detections] = field(default_factory=dict)
    images: list[GeneratedImage] = field(default_factory=list)


@dataclass
class ChatBatch:
    """Model inputs for B conversations (right-padded).

    Attributes:
        pixel_values: (B, 3, S, S); zeros for a conversation that shows no image.
        input_ids, kinds, groups, slot_offsets, labels: (B, L) the sequence layout (`common.sequence`).
        region_masks: (R, S, S) every region's mask at the model's image size, by conversation then order.
        region_image: (R,) the conversation each region belongs to.
        targets: each conversation's `Targets` (None: none).
        patches: (B, channels, g, g) the patch labels of every image; None where an example has none.
    """

    pixel_values: Tensor
    input_ids: Tensor
    kinds: Tensor
    groups: Tensor
    slot_offsets: Tensor
    labels: Tensor
    region_masks: Tensor
    region_image: Tensor
    targets: list[Targets | None] = field(default_factory=list)
    patches: Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ChatBatch:
        """The batch on `device` (the training loop's data loader and every model entry point call this)."""
        moved = {
            name: value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value
            for name, value in self.__dict__.items()
        }
        moved["targets"] = [t.to(device) if t is not None else None for t in self.targets]
        return ChatBatch(**moved)


class VisionLLMv2Processor:
    """Images, visual prompts and conversations -> model inputs.

    Args:
        config: the model config.
        tokenizer: the LLM's tokenizer; v2's tokens (`<image>`, `<region>`, `<query>`, the routes) are added.
    """

    def __init__(self, config: VisionLLMv2Config, tokenizer: PreTrainedTokenizerBase) -> None:
        self.config = config
        self.tokenizer = tokenizer
        missing = [t for t in V2_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        try:
            complete_special_tokens(tokenizer)
        except ValueError as error:
            raise ProcessorError(str(error)) from None
        vocab = tokenizer.get_vocab()
        self.image_id, self.region_id, self.query_id = vocab[IMAGE], vocab[REGION], vocab[QUERY]
        self.route_ids = {route: vocab[route] for route in config.link.routes}
        self.num_image_tokens = config.vision.grid**2
        self.mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def image(self, image: ImageLike) -> ImageInput:
        """A PIL image, a uint8 (H, W, 3) array or an image file, preprocessed."""
        if isinstance(image, str | Path):
            with Image.open(image) as opened:
                return normalise_image(opened, self.config.vision.image_size, self.mean, self.std)
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return normalise_image(image, self.config.vision.image_size, self.mean, self.std)

    def decoder_pixels(self, pixel_values: Tensor, side: int) -> Tensor:
        """(B, 3, S, S) normalised pixels -> (B, 3, side, side) in [-1, 1], as the image decoders read and make
        them (an edit's source, and every target image, pass here: the same resampling for both)."""
        unit = pixel_values * self.std.to(pixel_values.device) + self.mean.to(pixel_values.device)
        if unit.shape[-1] != side:
            unit = F.interpolate(unit, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        return (unit * 2 - 1).clamp(-1, 1)

    def region_mask(self, prompt: RegionPrompt, size_wh: tuple[int, int]) -> Tensor:
        """The prompt's mask at the model's image size (S, S), from the image as the user sees it (`size_wh`)."""
        side = self.config.vision.image_size
        mask = Image.fromarray(prompt_mask(prompt, size_wh).astype(np.uint8) * 255)
        resized = torch.from_numpy(np.asarray(mask.resize((side, side), Image.NEAREST)) > 0)
        if not resized.any():  # a region thinner than a pixel of the model's image: keep its centre
            ys, xs = np.nonzero(prompt_mask(prompt, size_wh))
            resized[int(ys.mean() * side / size_wh[1]), int(xs.mean() * side / size_wh[0])] = True
        return resized

    def sequence(self, turns: Sequence[Turn], link: SuperLink | None, image: bool = True) -> Segments:
        """The conversation's layout with its `<image>` expanded into the image's tokens (`image`: whether it
        shows one; a text-to-image request shows none)."""
        row = build_chat(self.tokenizer, turns, link)
        if row.ids.count(self.image_id) != int(image):
            shown = f"shows its image once ({IMAGE} in a user turn)" if image else f"without an image has no {IMAGE}"
            raise ProcessorError(f"a v2 conversation {shown}")
        if not image:
            return row
        at = row.ids.index(self.image_id)
        out = Segments()
        for key in ("ids", "kinds", "groups", "offsets", "labels"):
            values = getattr(row, key)
            setattr(out, key, values[:at] + [values[at]] * self.num_image_tokens + values[at + 1 :])
        out.labels[at : at + self.num_image_tokens] = [IGNORE] * self.num_image_tokens
        return out

    def collate(self, examples: Sequence[ChatExample], link: SuperLink | None, side: str = "right") -> ChatBatch:
        """One batch: right-padded for training, left-padded (`side="left"`) for generation, so that every
        conversation ends at the last position."""
        rows, masks, owners = [], [], []
        for b, example in enumerate(examples):
            row = self.sequence(example.turns, link, image=example.image is not None)
            if example.regions and example.image is None:
                raise ProcessorError(f"conversation {b} has visual prompts but no image for them to mark")
            if row.ids.count(self.region_id) != len(example.regions):
                raise ProcessorError(
                    f"conversation {b} has {row.ids.count(self.region_id)} {REGION} placeholders but "
                    f"{len(example.regions)} regions"
                )
            rows.append(row)
            masks += [self.region_mask(prompt, example.image.size_wh) for prompt in example.regions]
            owners += [b] * len(example.regions)
        size = self.config.vision.image_size
        padded = pad_segments(rows, self.tokenizer.pad_token_id, side)
        blank = torch.zeros(3, size, size)
        return ChatBatch(
            pixel_values=torch.stack([e.image.pixels if e.image is not None else blank for e in examples]),
            region_masks=torch.stack(masks).float() if masks else torch.zeros(0, size, size),
            region_image=torch.tensor(owners, dtype=torch.long),
            targets=[example.targets for example in examples],
            patches=_stacked([e.patches for e in examples]),
            **padded,
        )


class VisionLLMv2(nn.Module, TaskHelpers):
    """VisionLLM v2's chat model.

    Args:
        config: the model config.
        tokenizer: the LLM's tokenizer (v2's tokens are added to it); None: the one the config names (`llm.tokenizer`
            or `llm.pretrained`), or a vocabulary of `llm.vocab_size` built from the project's language.
        load_weights: load the pretrained weights the config names (False when a checkpoint follows).
    """

    version = 2

    TASKS = tuple(tasks_of_version(2))
    """The tasks this model answers (the task table's up to v2)."""

    FREEZE_GROUPS = (
        "vision",
        "bridge",
        "regions",
        "llm",
        "link",
        "object_decoder",
        "keypoint_decoder",
        "generation_decoder",
        "editing_decoder",
        "patch_labels",
    )
    """The parts a training stage may keep fixed (`train.freeze`): stage 3 freezes the chat model."""

    VISUAL_PARTS = ("vision", "object_decoder", "generation_decoder", "editing_decoder")
    """Top-level modules that train at `optim.visual_lr_scale` times the learning rate."""

    config_class = VisionLLMv2Config
    """The config a preset's `model:` section is read into."""

    def __init__(
        self,
        config: VisionLLMv2Config,
        tokenizer: PreTrainedTokenizerBase | None = None,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.processor = VisionLLMv2Processor(config, tokenizer or _llm_tokenizer(config))
        self.vision = VisionEncoder(config.vision, load_weights)
        self.llm = CausalLanguageModel(config.llm, None, len(self.processor.tokenizer), load_weights)
        width = self.llm.hidden_size
        self.bridge = Bridge(self.vision.width, width)
        self.regions = RegionEncoder(
            self.vision.width, width, patch=config.vision.patch_size, num_points=config.regions.num_points
        )
        self.link = SuperLink(self.processor.route_ids, self.processor.query_id, width)
        self.object_decoder = ObjectDecoder(config.objects, width, load_weights) if config.objects else None
        self.keypoint_decoder = (
            KeypointDecoder(config.keypoints, width, config.objects.d_model, len(self.object_decoder.input_proj))
            if config.keypoints and self.object_decoder is not None
            else None
        )
        calls = FAMILY_QUERIES["generation"]  # the query states a [GEN] or [EDIT] call carries
        self.generation_decoder = (
            ImageDecoder(config.generation, width, False, load_weights, calls) if config.generation else None
        )
        self.editing_decoder = (
            ImageDecoder(config.editing, width, True, load_weights, calls) if config.editing else None
        )
        self.patch_labels = PatchLabelHead(config.patch_labels, self.vision.width) if config.patch_labels else None
        missing = {Task.GENERATION: self.generation_decoder, Task.EDITING: self.editing_decoder}
        self.TASKS = tuple(t for t in self.TASKS if missing.get(t, True) is not None)

    def freeze(self, groups: Sequence[str]) -> None:
        """Keep these parts fixed (`FREEZE_GROUPS`).

        Raises:
            ValueError: a group this model does not have.
        """
        unknown = sorted(set(groups) - set(self.FREEZE_GROUPS))
        if unknown:
            raise ValueError(f"unknown freeze group(s) {unknown}; groups: {list(self.FREEZE_GROUPS)}")
        for name in groups:
            part = getattr(self, name)
            if part is not None:
                part.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, batch: ChatBatch, seen: tuple[Tensor, list[Tensor]] | None = None) -> Tensor:
        """The LLM's input embeddings: token embeddings with the image tokens, the region vectors and the
        super-link queries in their placeholders. `seen`: the vision encoder's output for these pixels, if the
        caller has it.

        Raises:
            PlaceholderMismatch: region placeholders and regions that do not match.
        """
        tokens, levels = seen if seen is not None else self.vision(batch.pixel_values)
        embeds = self.llm.embed_ids(batch.input_ids)
        image_tokens = self.bridge(tokens.to(self.bridge.mlp[0].weight.dtype))
        shown = (batch.input_ids == self.processor.image_id).any(1)
        if shown.all():
            embeds = self.llm.fill_placeholders(embeds, batch.input_ids, self.processor.image_id, image_tokens)
        elif shown.any():  # text-to-image conversations in the batch show no image
            rows = shown.nonzero().flatten()
            filled = self.llm.fill_placeholders(
                embeds[rows], batch.input_ids[rows], self.processor.image_id, image_tokens[rows]
            )
            embeds = embeds.index_copy(0, rows, filled)
        at = (batch.input_ids == self.processor.region_id).nonzero()  # row-major: by conversation, then order
        if len(at) != len(batch.region_masks):
            raise PlaceholderMismatch(f"{len(at)} {REGION} placeholders but {len(batch.region_masks)} regions")
        if len(at):
            vectors = self.regions(batch.pixel_values, batch.region_masks, batch.region_image, levels)
            embeds = embeds.index_put((at[:, 0], at[:, 1]), vectors.to(embeds.dtype))
        return self.link.fill(embeds, batch.input_ids)

    def forward(self, batch: ChatBatch | CachedCallBatch) -> dict[str, Tensor]:
        """The losses of a batch of conversations: the text loss (cross-entropy of the answers' tokens, routing
        tokens included, queries and everything else left out, averaged over those tokens) plus the decoders'
        losses on the conversations with targets, weighted by `decoder_loss_weight`, plus the patch labels' loss
        (weighted by `patch_labels.weight`) where the batch has them. A batch of cached image calls
        (`cached_calls`) has the image decoders' losses alone."""
        if isinstance(batch, CachedCallBatch):
            return self.cached_image_losses(batch)
        batch = batch.to(self.device)
        seen = self.vision(batch.pixel_values)
        hidden = self.hidden_states(batch, seen)
        targets = batch.labels[:, 1:]
        selected = targets != IGNORE
        if selected.any():
            logits = self.llm.vocab_logits(hidden[:, :-1][selected])
            text = F.cross_entropy(logits.float(), targets[selected])
        else:
            text = hidden.sum() * 0
        losses = {"text": text}
        if self.object_decoder is not None and any(t is not None for t in batch.targets):
            losses.update(self.decoder_losses(batch, hidden))
        losses.update(self.image_losses(batch, hidden))
        total = text + self.config.decoder_loss_weight * sum(v for k, v in losses.items() if k != "text")
        if self.patch_labels is not None and batch.patches is not None and self.patch_labels.config.weight > 0:
            losses["patches"] = self.patch_labels.loss(seen[0], batch.patches)
            total = total + self.patch_labels.config.weight * losses["patches"]
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

    def routed(
        self, hidden: Tensor, input_ids: Tensor, conditions: list[tuple[RouteCall, Tensor]] | None = None
    ) -> dict[str, list[list[Tensor]]]:
        """Per decoder family, per conversation, the query states of each of its calls in order (`conditions`: the
        calls' `SuperLink.conditions`, when the caller has them)."""
        found: dict[str, list[list[Tensor]]] = {family: [[] for _ in input_ids] for family in set(ROUTES.values())}
        for call, states in conditions if conditions is not None else self.link.conditions(hidden, input_ids):
            found[ROUTES[call.route]][call.sample].append(states)
        return found

    def decode_objects(
        self,
        pixel_values: Tensor,
        conditions: Sequence[Sequence[Tensor]],
        targets: Sequence[ObjectTargets] | None = None,
    ) -> ObjectOutput:
        """The object decoder on the chat model's pixels with the given routed categories (and, in training, the
        targets its denoising queries are built from)."""
        assert self.object_decoder is not None
        pixels = self.object_decoder.pixels(pixel_values, self.processor.mean, self.processor.std)
        return self.object_decoder(pixels, conditions, targets)

    def decoder_losses(self, batch: ChatBatch, hidden: Tensor) -> dict[str, Tensor]:
        """The object decoder's losses ("boxes", "masks") and the keypoint decoder's ("keypoints") on the
        conversations whose targets ask for them."""
        assert self.object_decoder is not None
        conditions = self.link.conditions(hidden, batch.input_ids)
        routed = self.routed(hidden, batch.input_ids, conditions)
        samples = [
            b for b, t in enumerate(batch.targets) if t is not None and t.objects is not None and routed["object"][b]
        ]
        zero = hidden.sum() * 0
        if not samples:
            out = {"boxes": zero, "masks": zero} | ({"denoising": zero} if self.object_decoder.label_embed else {})
            return out | ({"keypoints": zero} if self.keypoint_decoder is not None else {})
        index = torch.tensor(samples, device=hidden.device)
        chosen = [batch.targets[b] for b in samples]
        objects = [t.objects for t in chosen]
        output = self.decode_objects(batch.pixel_values[index], [routed["object"][b] for b in samples], objects)
        losses, (image, rows, cols) = self.object_decoder.loss(output, objects)
        weight = self.object_decoder.config.phrase_separation
        if weight:
            losses["separation"] = weight * self._phrase_separation(batch, conditions)
        if self.keypoint_decoder is None:
            return losses
        keep = [
            k
            for k, i in enumerate(image.tolist())
            if chosen[i].keypoints is not None and routed["keypoint"][samples[i]]
        ]
        if not keep:
            return losses | {"keypoints": zero}
        keep_t = torch.tensor(keep, device=image.device)
        image, rows, cols = image[keep_t], rows[keep_t], cols[keep_t]
        points = self.keypoint_decoder(output, image, rows, [routed["keypoint"][b] for b in samples])
        width = points[-1].shape[1]
        wanted = torch.zeros(len(keep), width, 3, device=points[-1].device)
        for k, (i, j) in enumerate(zip(image.tolist(), cols.tolist(), strict=True)):
            annotated = chosen[i].keypoints[j]
            wanted[k, : len(annotated)] = annotated
        return losses | {"keypoints": self.keypoint_decoder.loss(points, wanted)}

    def image_losses(self, batch: ChatBatch, hidden: Tensor) -> dict[str, Tensor]:
        """The generation and editing decoders' denoising losses ("generation", "editing") on the conversations
        whose [GEN] or [EDIT] call has a target image (an edit's source: the conversation's own image)."""
        decoders = (("[GEN]", "generation", self.generation_decoder), ("[EDIT]", "editing", self.editing_decoder))
        if all(decoder is None for _, _, decoder in decoders):
            return {}
        calls = self.link.conditions(hidden, batch.input_ids)
        losses = {}
        for route, name, decoder in decoders:
            if decoder is None:
                continue
            chosen = [
                (call.sample, states)
                for call, states in calls
                if call.route == route and (t := batch.targets[call.sample]) is not None and t.image is not None
            ]
            if not chosen:
                losses[name] = hidden.sum() * 0
                continue
            states = torch.stack([s for _, s in chosen])
            wanted = torch.stack([batch.targets[b].image for b, _ in chosen])
            sources = (
                self.decoder_pixels(batch.pixel_values[[b for b, _ in chosen]], decoder) if decoder.editing else None
            )
            losses[name] = decoder.loss(states, wanted, sources)
        return losses

    def cached_image_losses(self, batch: CachedCallBatch) -> dict[str, Tensor]:
        """The generation and editing decoders' losses on cached calls, weighted by `decoder_loss_weight`."""
        batch = batch.to(self.device)
        decoders = {Task.GENERATION: self.generation_decoder, Task.EDITING: self.editing_decoder}
        losses = {}
        for task, (states, targets, sources) in batch.calls.items():
            decoder = decoders[task]
            assert decoder is not None
            dtype = next(decoder.parameters()).dtype  # the cache keeps bfloat16 states and float16 pixels
            pixels = [t.to(dtype) if t is not None else None for t in (targets, sources)]
            losses[task.value] = decoder.loss(states.to(dtype), *pixels)
        total = self.config.decoder_loss_weight * sum(losses.values())
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

    def decoder_pixels(self, pixel_values: Tensor, decoder: ImageDecoder) -> Tensor:
        """The chat model's pixels as an image decoder reads them (`VisionLLMv2Processor.decoder_pixels`)."""
        return self.processor.decoder_pixels(pixel_values, decoder.config.image_size)

    def _phrase_separation(self, batch: ChatBatch, conditions: list[tuple[RouteCall, Tensor]]) -> Tensor:
        """`heads.phrase_separation` over the batch's object calls (`conditions`: every call with its query states)
        that a phrase of the answer names ("red circle" in "red circle [DET]"; a call on a visual prompt names
        none)."""
        p = self.processor
        stops = {p.query_id, p.region_id, *p.route_ids.values()}
        punctuation = set(p.tokenizer.convert_tokens_to_ids([",", "."]))
        ids, labels = batch.input_ids.tolist(), batch.labels.tolist()
        keys, states = [], []
        for call, state in conditions:
            if ROUTES[call.route] != "object":
                continue
            row, labelled, at, phrase = ids[call.sample], labels[call.sample], call.position - 1, []
            while at >= 0 and labelled[at] != IGNORE and row[at] not in stops:
                phrase.append(row[at])
                at -= 1
            key = tuple(t for t in reversed(phrase) if t not in punctuation)
            if key:
                keys.append(key)
                states.append(state)
        if len(keys) < 2:
            return batch.pixel_values.new_zeros(())
        return phrase_separation(self.object_decoder.categories.pool.pooled(states), keys)

    def hidden_states(self, batch: ChatBatch, seen: tuple[Tensor, list[Tensor]] | None = None) -> Tensor:
        """The LLM's last hidden states (B, L, D) over the whole sequences (what the decoders' queries read)."""
        embeds = self.embed(batch, seen)
        mask = block_mask(batch.kinds, batch.groups).unsqueeze(1)
        positions = slot_positions(batch.kinds, batch.groups, batch.slot_offsets)
        hidden, _ = self.llm.run(embeds, mask, positions)
        return hidden

    @torch.no_grad()
    def generate(self, batch: ChatBatch, max_new_tokens: int | None = None) -> list[Reply]:
        """Greedy replies to a left-padded batch of conversations that end with a user turn (`collate(...,
        side="left")`). A routing token is followed by its queries in the same step, as in training; each sample
        feeds what it writes, padded to the step's longest, so any mix of tasks decodes together.
        """
        limit = max_new_tokens or self.config.max_new_tokens
        batch = batch.to(self.device)
        p, tokenizer = self.processor, self.processor.tokenizer
        embeds = self.embed(batch)
        kinds, groups = batch.kinds, batch.groups
        cache = DynamicCache()
        positions = slot_positions(kinds, groups, batch.slot_offsets)
        hidden, cache = self.llm.run(embeds, block_mask(kinds, groups).unsqueeze(1), positions, cache)
        last = hidden[:, -1]
        banned = [p.image_id, p.region_id, p.query_id, tokenizer.pad_token_id, tokenizer.bos_token_id]
        eos = tokenizer.eos_token_id
        size = len(batch.input_ids)
        written: list[list[int]] = [[] for _ in range(size)]
        calls: list[list[tuple[str, Tensor]]] = [[] for _ in range(size)]
        names: list[list[str]] = [[] for _ in range(size)]
        since = [0] * size  # where each reply's text since its last call starts
        done = [False] * size
        for _ in range(limit):
            if all(done):
                break
            logits = self.llm.vocab_logits(last).float()
            logits[:, banned] = -torch.inf
            chosen = logits.argmax(-1).tolist()
            feeds: list[list[int]] = []
            for b, token in enumerate(chosen):
                if done[b] or token == eos:
                    done[b] = True
                    feeds.append([])
                    continue
                if self.link.queries_after(token):
                    names[b].append(self._text(written[b][since[b] :]).strip(" ,;."))
                    since[b] = len(written[b]) + 1
                written[b].append(token)
                feeds.append([token] + [p.query_id] * self.link.queries_after(token))
            if all(done):
                break
            width = max(len(f) for f in feeds)
            pad = tokenizer.pad_token_id
            step_ids = torch.tensor([f + [pad] * (width - len(f)) for f in feeds], device=last.device)
            step_kinds = torch.tensor([[SEQUENCE] * len(f) + [PAD] * (width - len(f)) for f in feeds])
            step_kinds = step_kinds.to(last.device)
            step_groups = torch.full_like(step_kinds, -1)
            all_kinds, all_groups = torch.cat([kinds, step_kinds], 1), torch.cat([groups, step_groups], 1)
            before = (kinds == SEQUENCE).long().sum(1, keepdim=True)
            step_positions = (before + (step_kinds == SEQUENCE).long().cumsum(1) - 1).clamp(min=0)
            step_embeds = self.link.fill(self.llm.embed_ids(step_ids), step_ids)
            mask = block_mask(step_kinds, step_groups, all_kinds, all_groups).unsqueeze(1)
            step_hidden, cache = self.llm.run(step_embeds, mask, step_positions, cache)
            kinds, groups = all_kinds, all_groups
            last = last.clone()
            for b, feed in enumerate(feeds):
                if not feed:
                    continue
                last[b] = step_hidden[b, len(feed) - 1]
                if len(feed) > 1:
                    calls[b].append((self.link.route_of_id[feed[0]], step_hidden[b, 1 : len(feed)]))
        return [Reply(self._text(ids), found, named) for ids, found, named in zip(written, calls, names, strict=True)]

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[ImageLike],
        instructions: Sequence[str | Instruction],
        min_score: float = 0.05,
        regions: Sequence[Sequence[RegionPrompt | tuple]] | None = None,
        keypoint_names: Sequence[str] = COCO_KEYPOINT_NAMES,
        history: Sequence[Sequence[Turn | dict]] | None = None,
        on_text: Callable[[int, str], None] | None = None,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        image_guidance: float | None = None,
        progress: bool = False,
    ) -> list[Decoded]:
        """Answer a batch of (image, request) pairs; tasks may be mixed freely.

        Args:
            images: PIL images, uint8 arrays or paths; None for a request that shows no image (text-to-image).
            instructions: `Instruction`s (`build_instruction`: the task and its classes, expression or question),
                or free text (a chat turn about the image).
            min_score: detections with a lower probability are left out.
            regions: per pair, the visual prompts of its conversation's `<region>` placeholders (region captions,
                interactive segmentation, region questions), in order.
            keypoint_names: the skeleton of a keypoint request that names none (an `Instruction` built with
                `keypoint_names` carries its own; COCO's 17 points by default).
            history: per pair, the earlier turns of its conversation (`Turn`s or {"role", "content"} messages,
                from a user turn, alternating); the request is the next user turn. The image is placed in the
                first user turn when no turn places it.
            on_text: called as `on_text(i, text)` with pair i's whole text answer once it is generated (the
                server's streaming interface; v2 does not stream token by token yet).
            seed: the starting noise of every image made (each pair's own: the same seed gives a request the same
                image, batched or alone).
            steps, guidance, image_guidance: the image decoders' sampling (their configs' defaults where None).
            progress: a progress bar over the denoising steps.

        Returns:
            One `Decoded` per pair: `Detections` (detection, instance / interactive segmentation with masks,
            grounding best first, keypoints), a `SegmentationMap` (semantic segmentation), a `GeneratedImage`
            (generation, editing) or a `TextAnswer` (with what the decoders found or made for each routing token a
            chat reply wrote).

        Raises:
            ProcessorError: a task this model does not answer, or a conversation it cannot take.
        """
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        prompts = [tuple(_region(r) for r in rs) for rs in regions] if regions is not None else [()] * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} region lists")
        earlier = [_turns(h) for h in history] if history is not None else [()] * len(images)
        if len(earlier) != len(images):
            raise ValueError(f"{len(images)} images but {len(earlier)} histories")
        plans = [
            self._plan(instruction, keypoint_names, before, image is not None)
            for instruction, before, image in zip(instructions, earlier, images, strict=True)
        ]
        earlier = [
            _placed(before, p.request) if image is not None else before
            for before, p, image in zip(earlier, plans, images, strict=True)
        ]
        inputs = [self.processor.image(image) if image is not None else None for image in images]
        sampling = {"seed": seed, "steps": steps, "guidance": guidance, "image_guidance": image_guidance}
        sampling["progress"] = progress
        results: list[Decoded | None] = [None] * len(images)
        was_training = self.training
        self.eval()
        try:
            chat = [i for i, p in enumerate(plans) if p.answer is None]
            if chat:
                examples = [
                    ChatExample(inputs[i], (*earlier[i], Turn("user", plans[i].request)), prompts[i]) for i in chat
                ]
                batch = self.processor.collate(examples, self.link, side="left").to(self.device)
                replies = self.generate(batch)
                for k, (i, reply) in enumerate(zip(chat, replies, strict=True)):
                    routed = {}
                    pixels = batch.pixel_values[k : k + 1]
                    if self.object_decoder is not None and reply.calls and inputs[i] is not None:
                        routed = self._decode_reply(pixels, inputs[i].size_wh, reply, min_score)
                    made = self._imagine_reply(pixels, inputs[i], reply, plans[i].request, **sampling)
                    results[i] = Decoded(TextAnswer(reply.text, routed, tuple(made)))
                    if on_text is not None:
                        on_text(i, reply.text)
            imagined = [i for i, p in enumerate(plans) if p.task in (Task.GENERATION, Task.EDITING)]
            if imagined:
                made = self._imagine(inputs, plans, imagined, earlier, **sampling)
                for i, image in zip(imagined, made, strict=True):
                    results[i] = Decoded(image)
            perceived = [i for i, p in enumerate(plans) if p.answer is not None and i not in imagined]
            if perceived:
                found = self._perceive(inputs, plans, prompts, perceived, min_score, earlier)
                for i, result in zip(perceived, found, strict=True):
                    results[i] = Decoded(result)
        finally:
            self.train(was_training)
        return [r for r in results if r is not None]

    def _plan(
        self, instruction: str | Instruction, keypoint_names: Sequence[str], earlier: Sequence[Turn], image: bool
    ) -> Plan:
        """The plan of one request after `earlier` turns: a task this model answers, the image placed once (`image`:
        whether the request shows one; a chat turn without one is sent as it is)."""
        if isinstance(instruction, Instruction) and instruction.task not in self.TASKS:
            answered = ", ".join(t.value for t in self.TASKS)
            raise ProcessorError(f"this model does not answer {instruction.task.value}; it answers: {answered}")
        planned = plan(instruction, keypoint_names)
        if (earlier or not image) and isinstance(instruction, str) and IMAGE not in instruction:
            return replace(planned, request=instruction)  # the image goes in an earlier turn (`_placed`), or nowhere
        return planned

    def check_request(
        self,
        instruction: str | Instruction,
        max_prompt_tokens: int | None = None,
        history: Sequence[Turn | dict] = (),
        regions: int = 0,
        image: bool | None = None,
    ) -> int:
        """Check, without model work, that `predict` can answer this request; its cost in LLM tokens.

        Args:
            instruction: as for `predict`.
            max_prompt_tokens: a lower limit on the conversation's tokens than the model's own, or None.
            history: the earlier turns, as for `predict`.
            regions: how many visual prompts come with the conversation.
            image: whether the request comes with an image; None: as its task reads one (a generation request
                shows none, every other request one).

        Returns:
            The most tokens the LLM runs for it: the conversation with its image tokens and the longest answer.

        Raises:
            ProcessorError: what `predict` would refuse: a task it does not answer, an image where the request
                takes none or none where it reads one, a conversation that does not alternate or places the image
                twice, `<region>` placeholders that do not match the prompts, or a conversation over the token limit.
        """
        earlier = _turns(history)
        generation = isinstance(instruction, Instruction) and instruction.task is Task.GENERATION
        shown = image if image is not None else not generation
        planned = self._plan(instruction, COCO_KEYPOINT_NAMES, earlier, shown)
        if shown and generation:
            raise ProcessorError("a generation request shows no image: send the description alone")
        if not shown and planned.task is not Task.CHAT and not generation:
            raise ProcessorError(f"{planned.task.value} reads an image: send one with the request")
        if not shown and regions:
            raise ProcessorError("visual prompts mark the image: send the image with them")
        turns = (*(_placed(earlier, planned.request) if shown else earlier), Turn("user", planned.request))
        try:
            row = build_chat(self.processor.tokenizer, turns, self.link)
        except ValueError as error:
            raise ProcessorError(str(error)) from None
        if row.ids.count(self.processor.image_id) != int(shown):
            if shown:
                raise ProcessorError(f"a v2 conversation shows its image once ({IMAGE} in one user turn)")
            raise ProcessorError(f"a text-to-image conversation shows no image: leave {IMAGE} out")
        placed = row.ids.count(self.processor.region_id)
        if placed != regions:
            raise ProcessorError(f"the conversation has {placed} {REGION} placeholders but {regions} regions")
        limit = min(self.config.max_prompt_tokens, max_prompt_tokens or self.config.max_prompt_tokens)
        if len(row.ids) - 1 > limit:
            raise ProcessorError(
                f"the conversation is {len(row.ids) - 1} tokens long; this server takes at most {limit}: "
                "shorten it or drop earlier turns"
            )
        answer = len(self.processor.tokenizer(planned.answer).input_ids) if planned.answer else 0
        image_tokens = self.processor.num_image_tokens if shown else 0
        return len(row.ids) - 1 + image_tokens + max(answer, self.config.max_new_tokens)

    def _perceive(
        self,
        inputs: Sequence[ImageInput],
        plans: Sequence[Plan],
        prompts: Sequence[tuple[RegionPrompt, ...]],
        chosen: Sequence[int],
        min_score: float,
        earlier: Sequence[Sequence[Turn]],
    ) -> list[Detections | SegmentationMap]:
        """The perception pairs `chosen` (after their `earlier` turns): their routed answers read in one pass, then
        the decoders."""
        if self.object_decoder is None:
            raise ProcessorError("this v2 model has no object decoder: it answers chat requests only")
        examples = [
            ChatExample(
                inputs[i],
                (*earlier[i], Turn("user", plans[i].request), Turn("assistant", plans[i].answer)),
                prompts[i],
            )
            for i in chosen
        ]
        batch = self.processor.collate(examples, self.link).to(self.device)
        routed = self.routed(self.hidden_states(batch), batch.input_ids)
        output = self.decode_objects(batch.pixel_values, routed["object"])
        sizes = [inputs[i].size_wh for i in chosen]
        out: list[Detections | SegmentationMap] = []
        for b, i in enumerate(chosen):
            task, names = plans[i].task, plans[i].class_names
            if task is Task.SEMANTIC_SEGMENTATION:
                out.append(semantic_map(output, b, sizes[b], names))
            elif task is Task.KEYPOINTS:
                out.append(self._keypoints(output, b, sizes[b], routed["keypoint"], plans[i], min_score))
            else:
                masks = task not in (Task.DETECTION, Task.GROUNDING)
                if task is Task.INTERACTIVE_SEGMENTATION:  # the object the prompt marks, however scored
                    found = self.object_decoder.detect(output, b, sizes[b], 100, 0.0, masks=True)
                    found = prompted(found, prompt_mask(prompts[i][-1], sizes[b]))
                else:
                    one = task is Task.GROUNDING  # the best object, however scored
                    found = self.object_decoder.detect(
                        output, b, sizes[b], 1 if one else 100, 0.0 if one else min_score, masks
                    )
                out.append(detections(found, names))
        return out

    def _image_decoder(self, route: str) -> ImageDecoder:
        decoder = self.generation_decoder if route == "[GEN]" else self.editing_decoder
        if decoder is None:
            kind = "generation" if route == "[GEN]" else "editing"
            raise ProcessorError(f"this v2 model has no {kind} decoder: it does not answer {route} requests")
        return decoder

    def _images(
        self,
        route: str,
        states: Tensor,
        sources: Sequence[ImageInput | None],
        pixel_values: Tensor,
        prompts: Sequence[str],
        seed: int,
        steps: int | None,
        guidance: float | None,
        image_guidance: float | None,
        progress: bool,
    ) -> list[GeneratedImage]:
        """The images of B calls of one route (states (B, Q, D)); an edit is returned at its source's size."""
        decoder = self._image_decoder(route)
        if decoder.editing and any(source is None for source in sources):
            raise ProcessorError("an edit needs the image to edit: send one with the instruction")
        made = decoder.sample(
            states,
            [seed] * len(states),
            self.decoder_pixels(pixel_values, decoder) if decoder.editing else None,
            steps,
            guidance,
            image_guidance,
            progress,
        )
        pixels = ((made + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for image, source, prompt in zip(pixels, sources, prompts, strict=True):
            if decoder.editing and source is not None and image.shape[1::-1] != source.size_wh:
                image = np.asarray(Image.fromarray(image).resize(source.size_wh, Image.BICUBIC))
            out.append(GeneratedImage(np.ascontiguousarray(image), prompt, seed))
        return out

    def _imagine(
        self,
        inputs: Sequence[ImageInput | None],
        plans: Sequence[Plan],
        chosen: Sequence[int],
        earlier: Sequence[Sequence[Turn]],
        **sampling: Any,
    ) -> list[GeneratedImage]:
        """The generation and editing pairs `chosen`: their routed answers read in one pass, then each route's
        decoder over its calls at once."""
        examples = [
            ChatExample(inputs[i], (*earlier[i], Turn("user", plans[i].request), Turn("assistant", plans[i].answer)))
            for i in chosen
        ]
        batch = self.processor.collate(examples, self.link).to(self.device)
        last = {
            call.sample: (call, states)
            for call, states in self.link.conditions(self.hidden_states(batch), batch.input_ids)
        }
        out: dict[int, GeneratedImage] = {}
        for route in ("[GEN]", "[EDIT]"):
            rows = [b for b, i in enumerate(chosen) if ROUTE[plans[i].task] == route]
            if not rows:
                continue
            states = torch.stack([last[b][1] for b in rows])
            made = self._images(
                route,
                states,
                [inputs[chosen[b]] for b in rows],
                batch.pixel_values[rows],
                [plans[chosen[b]].prompt or plans[chosen[b]].request for b in rows],
                **sampling,
            )
            out.update(zip(rows, made, strict=True))
        return [out[b] for b in range(len(chosen))]

    def _imagine_reply(
        self, pixel_values: Tensor, image: ImageInput | None, reply: Reply, request: str, **sampling: Any
    ) -> list[GeneratedImage]:
        """The images a reply's [GEN] and [EDIT] calls make, in order (an edit of the conversation's image);
        `request`: the user turn they answer."""
        made = []
        for route, states in reply.calls:
            if ROUTES[route] == "generation":
                made += self._images(route, states[None], [image], pixel_values, [request], **sampling)
        return made

    def _keypoints(
        self,
        output: ObjectOutput,
        image: int,
        size_wh: tuple[int, int],
        names: Sequence[Sequence[Tensor]],
        planned: Plan,
        min_score: float,
    ) -> Detections:
        """The best instances of the routed class with the keypoint decoder's points."""
        if self.keypoint_decoder is None:
            raise ProcessorError("this v2 model has no keypoint decoder")
        count = min(self.keypoint_decoder.config.max_instances, output.class_logits.shape[1])
        found = self.object_decoder.detect(output, image, size_wh, count, min_score, masks=False)
        if len(found.queries) == 0:  # no instance: nothing for the keypoint decoder to read
            points = torch.zeros(0, len(planned.keypoint_names), 2)
        else:
            points = self.keypoint_decoder(output, torch.full_like(found.queries, image), found.queries, names)[-1]
        return keypoint_detections(found, points, size_wh, planned.class_names[0], len(planned.keypoint_names))

    # -- task helpers (detect, segment, ground, caption and ask come from TaskHelpers) -------------

    def keypoints(
        self,
        image: ImageLike,
        min_score: float = 0.05,
        category: str = "person",
        names: Sequence[str] = COCO_KEYPOINT_NAMES,
    ) -> Detections:
        """The instances of `category` with the points `names` names (any skeleton: a person's 17, a star's tips)."""
        instruction = build_instruction(Task.KEYPOINTS, classes=[category], keypoint_names=names)
        return self._one(image, instruction, min_score, keypoint_names=names)

    def segment_semantic(self, image: ImageLike, classes: Sequence[str]) -> SegmentationMap:
        """One class per pixel (0: background, i + 1: classes[i])."""
        return self._one(image, build_instruction(Task.SEMANTIC_SEGMENTATION, classes=classes))

    def segment_region(self, image: ImageLike, region: RegionPrompt | tuple) -> Detections:
        """The object a visual prompt marks (a click, a box, a scribble, a mask), with its mask."""
        instruction = build_instruction(Task.INTERACTIVE_SEGMENTATION, regions=REGION_MARK)
        return self._one(image, instruction, 0.0, regions=[[region]])

    def describe_region(self, image: ImageLike, region: RegionPrompt | tuple) -> str:
        """A short description of the object a visual prompt marks."""
        instruction = build_instruction(Task.REGION_CAPTION, regions=REGION_MARK)
        return self._one(image, instruction, regions=[[region]]).text

    def text_to_image(
        self,
        prompts: str | Sequence[str],
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        progress: bool = False,
    ) -> list[GeneratedImage]:
        """Images of descriptions ("a red circle left of a blue square"), all in one batch; each from `seed`."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        instructions = [build_instruction(Task.GENERATION, description=p) for p in prompts]
        found = self.predict(
            [None] * len(prompts), instructions, seed=seed, steps=steps, guidance=guidance, progress=progress
        )
        return [d.prediction for d in found]

    def edit_image(
        self,
        images: ImageLike | Sequence[ImageLike],
        instructions: str | Sequence[str],
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        image_guidance: float | None = None,
        progress: bool = False,
    ) -> list[GeneratedImage]:
        """Images edited as instructed ("make the star green"), all in one batch; one instruction for every image
        or one per image."""
        images = [images] if isinstance(images, str | Path | Image.Image | np.ndarray) else list(images)
        instructions = [instructions] * len(images) if isinstance(instructions, str) else list(instructions)
        requests = [build_instruction(Task.EDITING, edit=text) for text in instructions]
        found = self.predict(
            images,
            requests,
            seed=seed,
            steps=steps,
            guidance=guidance,
            image_guidance=image_guidance,
            progress=progress,
        )
        return [d.prediction for d in found]

    def _text(self, ids: list[int]) -> str:
        tokenizer = self.processor.tokenizer
        return tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(ids)).strip()

    def chat(
        self,
        image: ImageLike | None,
        turns: Sequence[Turn | dict],
        regions: Sequence[RegionPrompt | tuple] = (),
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        image_guidance: float | None = None,
        progress: bool = False,
    ) -> Reply:
        """The reply to a conversation about one image (or none) that ends with a user turn.

        Args:
            image: a PIL image, a uint8 array or an image file; None: a conversation without one ("draw a red
                circle left of a blue square").
            turns: `Turn`s, or messages as {"role": "user" | "assistant", "content": text}; the image goes first in
                the first user turn when no turn places it with `<image>`.
            regions: `RegionPrompt`s, or (kind, data) pairs such as ("box", [x1, y1, x2, y2]), in the order of the
                conversation's `<region>` placeholders.
            seed, steps, guidance, image_guidance, progress: how the images of [GEN] and [EDIT] calls are made
                (as for `predict`).

        Raises:
            ValueError: a conversation or prompt the model cannot take (ChatTemplateError, RegionError,
                ProcessorError), with what is wrong.
        """
        turns = _placed(_turns(turns), "") if image is not None else _turns(turns)
        regions = [_region(r) for r in regions]
        was_training = self.training
        self.eval()
        try:
            shown = self.processor.image(image) if image is not None else None
            example = ChatExample(shown, tuple(turns), tuple(regions))
            batch = self.processor.collate([example], self.link, side="left").to(self.device)
            reply = self.generate(batch)[0]
            if self.object_decoder is not None and shown is not None:
                reply.results = self._decode_reply(batch.pixel_values, shown.size_wh, reply)
            sampling = {"seed": seed, "steps": steps, "guidance": guidance, "image_guidance": image_guidance}
            reply.images = self._imagine_reply(
                batch.pixel_values, shown, reply, turns[-1].text, progress=progress, **sampling
            )
            return reply
        finally:
            self.train(was_training)

    def _decode_reply(
        self, pixel_values: Tensor, size_wh: tuple[int, int], reply: Reply, min_score: float = 0.05
    ) -> dict[str, Detections]:
        """The decoders' results for a reply's calls (one image): its object calls are one category set for the
        object decoder; its [POSE] calls name the points of the instances of its first object call. Detections
        below `min_score` are left out."""
        assert self.object_decoder is not None
        called = list(zip(reply.calls, reply.names, strict=True))
        objects = [(route, name, states) for (route, states), name in called if ROUTES[route] == "object"]
        if not objects:
            return {}
        output = self.decode_objects(pixel_values, [[states for _, _, states in objects]])
        found = self.object_decoder.detect(output, 0, size_wh, min_score=min_score)
        names = [name for _, name, _ in objects]
        results: dict[str, Detections] = {}
        for route in dict.fromkeys(route for route, _, _ in objects):
            mine = torch.tensor(
                [k for k, (r, _, _) in enumerate(objects) if r == route], device=found.categories.device
            )
            keep = torch.isin(found.categories, mine).nonzero().flatten()
            if route == "[GRD]":
                keep = keep[:1]
            chosen = found.select(keep)
            results[route] = detections(chosen if route == "[SEG]" else replace(chosen, masks=None), names)
        points = [(name, states) for (route, states), name in called if ROUTES[route] == "keypoint"]
        if points and self.keypoint_decoder is not None:
            pose = Plan(Task.KEYPOINTS, "", None, (names[0],), tuple(name for name, _ in points))
            results["[POSE]"] = self._keypoints(output, 0, size_wh, [[s for _, s in points]], pose, min_score)
        return results

    # -- checkpoints ----------------------------------------------------------------------------

    def save_pretrained(
        self, folder: str | Path, dtype: torch.dtype | None = None, state_dict: dict[str, Tensor] | None = None
    ) -> Path:
        """Write config.json, model.safetensors and the tokenizer; files are replaced atomically. `state_dict`: the
        weights to write instead of the module's (gathered from a sharded run)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_weights(folder, self, dtype=dtype, state_dict=state_dict)
        config_tmp = folder / (CONFIG_NAME + ".tmp")
        self.config.save(config_tmp)
        config_tmp.replace(folder / CONFIG_NAME)
        self.processor.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        return folder

    @classmethod
    def for_stage(cls, config: VisionLLMv2Config, init_from: str | Path | None) -> VisionLLMv2:
        """The model a training stage starts from: built from the run's config, with every weight the `init_from`
        checkpoint has (its tokenizer too; None: a new model). Parts the checkpoint lacks start fresh (stage 2
        attaches the decoders to the chat model of stage 1), from the trained weights `objects.init_detector` and
        `vision.init_backbone` name where set.

        Raises:
            CheckpointError: a checkpoint is damaged, or holds a part whose shape the run's config changes.
        """
        if init_from is None:
            model = cls(config)
            fresh = list(model.state_dict())
        else:
            model = cls(config, read_tokenizer(Path(init_from)))
            fresh = read_weights(Path(init_from), model, strict=False)
        starts = (  # (the part's weight names, the trained model it starts from, how it loads those weights)
            (
                "object_decoder.",
                config.objects and config.objects.init_detector,
                lambda f: model.object_decoder.load_detector(f),
            ),
            ("vision.cnn.", config.vision.init_backbone, lambda f: model.vision.cnn.load_backbone(f)),
        )
        for prefix, folder, load in starts:
            if folder and any(name.startswith(prefix) for name in fresh):
                loaded, _ = load(folder)
                logger.info("%s starts from %s: %d weights loaded", prefix.rstrip("."), folder, len(loaded))
                fresh = [name for name in fresh if name.removeprefix(prefix) not in loaded]
        if fresh and init_from is not None:
            parts = sorted({name.split(".")[0] for name in fresh})
            logger.info("%s has no weights for %s: they start fresh", init_from, ", ".join(parts))
        return model

    @staticmethod
    def loss_options(train: Any) -> dict[str, Any]:
        """The keyword arguments of `forward` a training stage sets: none."""
        return {}

    def training_stream(
        self, root: str | Path, split: str, mix: MixConfig, seed: int = 0, batch_size: int = 1
    ) -> torch.utils.data.Dataset:
        """The training conversations of a task mix over a ShapesWorld split: example i is a function of (seed, i)."""
        from visionllm.models.v2.data import ChatMixture  # the stream reads the model's processor

        return ChatMixture(root, split, self.processor, mix, seed=seed, batch_size=batch_size)

    def cached_call_stream(
        self,
        root: str | Path,
        split: str,
        mix: MixConfig,
        frozen: Sequence[str],
        cache: Path,
        seed: int = 0,
        batch_size: int = 1,
        progress: bool = True,
    ) -> torch.utils.data.Dataset:
        """The image calls of a mix of image tasks with their query states read once (`cached_calls`), for a stage
        that trains the image decoders alone; `cache` is the file that keeps them (read when it is there).

        Raises:
            ConfigError: the mix has other tasks, or a part that makes the query states is not in `frozen`.
        """
        from visionllm.models.v2.data import IMAGE_TASKS, ChatMixture  # the stream reads the model's processor

        others = sorted(name for name, weight in mix.tasks.items() if weight > 0 and Task(name) not in IMAGE_TASKS)
        if others:
            raise ConfigError(
                f"train.cache_query_states trains the image decoders alone, but the mix has {others}: "
                "leave them out of train.mix.tasks, or turn the cache off"
            )
        thawed = [name for name in UPSTREAM if name not in frozen]
        if thawed:
            raise ConfigError(
                f"train.cache_query_states keeps the query states fixed, but {thawed} would train: add them to "
                "train.freeze, or turn the cache off"
            )
        mixture = ChatMixture(root, split, self.processor, mix, seed=seed)
        return CachedCallStream(mixture, self, cache, batch_size, progress)

    def collate(self, examples: Sequence[ChatExample | CachedCall]) -> ChatBatch | CachedCallBatch:
        """One training batch from examples of `training_stream` (any mix of tasks) or `cached_call_stream`."""
        if examples and isinstance(examples[0], CachedCall):
            return CachedCallBatch.of(examples)
        return self.processor.collate(examples, self.link)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> VisionLLMv2:
        """Rebuild a model from its folder alone (config.json, model.safetensors, tokenizer/).

        Raises:
            CheckpointError: a missing or damaged part, naming the file.
        """
        folder = Path(folder)
        model = cls(read_config(folder, VisionLLMv2Config), read_tokenizer(folder), load_weights=False)
        read_weights(folder, model)
        model.float()
        return model.to(device).eval()


def _region(prompt: RegionPrompt | tuple) -> RegionPrompt:
    """A visual prompt, or a (kind, data) pair such as ("box", [x1, y1, x2, y2])."""
    return prompt if isinstance(prompt, RegionPrompt) else RegionPrompt(*prompt)


def _stacked(tensors: Sequence[Tensor | None]) -> Tensor | None:
    """The tensors stacked, or None when any is missing."""
    return None if any(t is None for t in tensors) else torch.stack(list(tensors))


def _turns(messages: Sequence[Turn | dict]) -> tuple[Turn, ...]:
    """Earlier turns of a conversation as `Turn`s (from `Turn`s or {"role", "content"} messages)."""
    return tuple(m if isinstance(m, Turn) else Turn(m["role"], m["content"]) for m in messages)


def _placed(earlier: tuple[Turn, ...], request: str) -> tuple[Turn, ...]:
    """The earlier turns with the image put first in their first user turn, when neither they nor the request
    show it."""
    if not earlier or IMAGE in request or any(IMAGE in t.text for t in earlier):
        return earlier
    turns = list(earlier)
    first = next((k for k, t in enumerate(turns) if t.role == "user"), None)
    if first is not None:
        turns[first] = Turn("user", f"{IMAGE} {turns[first].text}")
    return tuple(turns)


def _llm_tokenizer(config: VisionLLMv2Config) -> PreTrainedTokenizerBase:
    tokenizer = configured_tokenizer(config.llm)
    if tokenizer is None:
        raise ConfigError("a v2 model needs llm.tokenizer, llm.pretrained or llm.vocab_size to have a vocabulary")
    return tokenizer
