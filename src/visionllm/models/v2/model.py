"""VisionLLM v2: the chat model (CLIP encoder, bridge, region encoder, LLM) and its super links.

The LLM's input is a multi-turn conversation (`chat.build_chat`) whose `<image>` is expanded into the encoder's
g*g patch tokens (through the bridge), whose `<region>` placeholders hold one region vector each, and whose
routing tokens are followed by their family's queries. The task decoders read the queries' hidden states; they
join this model as they land (`SuperLink.conditions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from visionllm.models.common.inputs import ImageInput, ProcessorError, normalise_image
from visionllm.models.common.llm import CausalLanguageModel, PlaceholderMismatch, complete_special_tokens
from visionllm.models.common.sequence import IGNORE, Segments, block_mask, pad_segments, slot_positions
from visionllm.models.v2.chat import Turn, build_chat
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.regions import RegionEncoder, RegionPrompt, prompt_mask
from visionllm.models.v2.superlink import QUERY, REGION, V2_TOKENS, SuperLink
from visionllm.models.v2.vision import Bridge, VisionEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE = V2_TOKENS[0]


@dataclass
class ChatExample:
    """One conversation about one image.

    Attributes:
        image: the preprocessed image.
        turns: user and assistant turns, alternating from the user; `<image>` once, `<region>` per region.
        regions: the visual prompts, in the order of the `<region>` placeholders.
    """

    image: ImageInput
    turns: tuple[Turn, ...]
    regions: tuple[RegionPrompt, ...] = ()


@dataclass
class ChatBatch:
    """Model inputs for B conversations (right-padded).

    Attributes:
        pixel_values: (B, 3, S, S).
        input_ids, kinds, groups, slot_offsets, labels: (B, L) the sequence layout (`common.sequence`).
        region_masks: (R, S, S) every region's mask at the model's image size, by conversation then order.
        region_image: (R,) the conversation each region belongs to.
    """

    pixel_values: Tensor
    input_ids: Tensor
    kinds: Tensor
    groups: Tensor
    slot_offsets: Tensor
    labels: Tensor
    region_masks: Tensor
    region_image: Tensor


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

    def image(self, image: Image.Image | np.ndarray) -> ImageInput:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return normalise_image(image, self.config.vision.image_size, self.mean, self.std)

    def region_mask(self, prompt: RegionPrompt, size_wh: tuple[int, int]) -> Tensor:
        """The prompt's mask at the model's image size (S, S), from the image as the user sees it (`size_wh`)."""
        side = self.config.vision.image_size
        mask = Image.fromarray(prompt_mask(prompt, size_wh).astype(np.uint8) * 255)
        resized = torch.from_numpy(np.asarray(mask.resize((side, side), Image.NEAREST)) > 0)
        if not resized.any():  # a region thinner than a pixel of the model's image: keep its centre
            ys, xs = np.nonzero(prompt_mask(prompt, size_wh))
            resized[int(ys.mean() * side / size_wh[1]), int(xs.mean() * side / size_wh[0])] = True
        return resized

    def sequence(self, turns: Sequence[Turn], link: SuperLink | None) -> Segments:
        """The conversation's layout with its `<image>` expanded into the image's tokens."""
        row = build_chat(self.tokenizer, turns, link)
        if row.ids.count(self.image_id) != 1:
            raise ProcessorError(f"a v2 conversation shows its image once ({IMAGE} in a user turn)")
        at = row.ids.index(self.image_id)
        out = Segments()
        for key in ("ids", "kinds", "groups", "offsets", "labels"):
            values = getattr(row, key)
            setattr(out, key, values[:at] + [values[at]] * self.num_image_tokens + values[at + 1 :])
        out.labels[at : at + self.num_image_tokens] = [IGNORE] * self.num_image_tokens
        return out

    def collate(self, examples: Sequence[ChatExample], link: SuperLink | None) -> ChatBatch:
        rows, masks, owners = [], [], []
        for b, example in enumerate(examples):
            row = self.sequence(example.turns, link)
            if row.ids.count(self.region_id) != len(example.regions):
                raise ProcessorError(
                    f"conversation {b} has {row.ids.count(self.region_id)} {REGION} placeholders but "
                    f"{len(example.regions)} regions"
                )
            rows.append(row)
            masks += [self.region_mask(prompt, example.image.size_wh) for prompt in example.regions]
            owners += [b] * len(example.regions)
        side = self.config.vision.image_size
        padded = pad_segments(rows, self.tokenizer.pad_token_id)
        return ChatBatch(
            pixel_values=torch.stack([e.image.pixels for e in examples]),
            region_masks=torch.stack(masks).float() if masks else torch.zeros(0, side, side),
            region_image=torch.tensor(owners, dtype=torch.long),
            **padded,
        )


class VisionLLMv2(nn.Module):
    """VisionLLM v2's chat model.

    Args:
        config: the model config.
        tokenizer: the LLM's tokenizer (v2's tokens are added to it).
        load_weights: load the pretrained weights the config names (False when a checkpoint follows).
    """

    version = 2

    def __init__(
        self, config: VisionLLMv2Config, tokenizer: PreTrainedTokenizerBase, load_weights: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        self.processor = VisionLLMv2Processor(config, tokenizer)
        self.vision = VisionEncoder(config.vision, load_weights)
        self.llm = CausalLanguageModel(config.llm, None, len(tokenizer), load_weights)
        width = self.llm.hidden_size
        self.bridge = Bridge(self.vision.width, width)
        self.regions = RegionEncoder(
            self.vision.width, width, patch=config.vision.patch_size, num_points=config.regions.num_points
        )
        self.link = SuperLink(self.processor.route_ids, self.processor.query_id, width)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, batch: ChatBatch) -> Tensor:
        """The LLM's input embeddings: token embeddings with the image tokens, the region vectors and the
        super-link queries in their placeholders.

        Raises:
            PlaceholderMismatch: region placeholders and regions that do not match.
        """
        tokens, levels = self.vision(batch.pixel_values)
        embeds = self.llm.embed_ids(batch.input_ids)
        image_tokens = self.bridge(tokens.to(self.bridge.mlp[0].weight.dtype))
        embeds = self.llm.fill_placeholders(embeds, batch.input_ids, self.processor.image_id, image_tokens)
        at = (batch.input_ids == self.processor.region_id).nonzero()  # row-major: by conversation, then order
        if len(at) != len(batch.region_masks):
            raise PlaceholderMismatch(f"{len(at)} {REGION} placeholders but {len(batch.region_masks)} regions")
        if len(at):
            vectors = self.regions(batch.pixel_values, batch.region_masks, batch.region_image, levels)
            embeds = embeds.index_put((at[:, 0], at[:, 1]), vectors.to(embeds.dtype))
        return self.link.fill(embeds, batch.input_ids)

    def forward(self, batch: ChatBatch) -> dict[str, Tensor]:
        """The text loss of a batch of conversations: cross-entropy of the answers' tokens (routing tokens
        included, queries and everything else left out), averaged over those tokens."""
        hidden = self.hidden_states(batch)
        targets = batch.labels[:, 1:]
        selected = targets != IGNORE
        if not selected.any():
            zero = hidden.sum() * 0
            return {"loss": zero, "text": zero.detach()}
        logits = self.llm.vocab_logits(hidden[:, :-1][selected])
        loss = F.cross_entropy(logits.float(), targets[selected])
        return {"loss": loss, "text": loss.detach()}

    def hidden_states(self, batch: ChatBatch) -> Tensor:
        """The LLM's last hidden states (B, L, D) over the whole sequences (what the decoders' queries read)."""
        embeds = self.embed(batch)
        mask = block_mask(batch.kinds, batch.groups).unsqueeze(1)
        positions = slot_positions(batch.kinds, batch.groups, batch.slot_offsets)
        hidden, _ = self.llm.run(embeds, mask, positions)
        return hidden
