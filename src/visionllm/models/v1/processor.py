"""Turn images and instructions into model inputs, segment by segment.

The LLM's input for one sample is
    [bos] instruction-before-<image> [<image>] * M instruction-after-<image> | header | answer
where the answer is text + [eos] for text formats, or K groups of slot query tokens (<cls> <x1> <y1>
...) for structured formats. Ids are built piece by piece from the codec's token table, never by
re-tokenising joined strings, so the label mask cannot drift.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from visionllm.config import VisionLLMConfig
from visionllm.formats import tokens as tk
from visionllm.formats.codec import OutputFormat
from visionllm.formats.tokens import CodecConfig, CodecVocabulary
from visionllm.models.common.inputs import ImageInput, ProcessorError, check_text, normalise_image
from visionllm.models.common.llm import complete_special_tokens
from visionllm.models.common.sequence import Segments

# Codec tokens (<image>, <c0>, <p-inv>, ...) are removed from the text encoder's input.
_CODEC_TOKEN = re.compile(r"<(?:image|c\d+|p-?\d+|p-inv|x\d+|y\d+|fmt|/fmt|text|cls|kpt|sep|no-obj)>")


# A class token in an instruction's text.
_CLASS_TOKEN = re.compile(r"<c(\d+)>")

# A longer instruction is refused from its length alone, without tokenising it: no LLM token covers more characters
# than this in practice, so such text is over `decoder.max_prompt_tokens` anyway (and tokenising megabytes is work).
MAX_CHARS_PER_TOKEN = 16


def prepare_llm_tokenizer(tokenizer: PreTrainedTokenizerBase, codec: CodecConfig) -> CodecVocabulary:
    """Add the codec's tokens to a tokenizer (in order, contiguous) and make sure it has bos / eos / pad.

    Returns:
        The codec vocabulary with the id offset of the added tokens.
    """
    wanted = list(tk.special_tokens(codec))
    missing = [t for t in wanted if t not in tokenizer.get_vocab()]
    if missing and len(missing) != len(wanted):
        raise ProcessorError("the tokenizer already has some but not all codec tokens: it was built for another codec")
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": wanted}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(wanted)
    if ids != list(range(ids[0], ids[0] + len(wanted))):
        raise ProcessorError("the codec tokens did not get contiguous ids in the tokenizer")
    try:
        complete_special_tokens(tokenizer)
    except ValueError as error:
        raise ProcessorError(str(error)) from None
    return CodecVocabulary(codec, offset=ids[0])


class VisionLLMProcessor:
    """Text and images -> ids and tensors for `VisionLLM`.

    Args:
        config: the model config (image size, normalisation, codec sizes, M).
        tokenizer: the LLM's tokenizer, with the codec tokens added (`prepare_llm_tokenizer`).
        text_tokenizer: the text encoder's tokenizer.
    """

    def __init__(
        self, config: VisionLLMConfig, tokenizer: PreTrainedTokenizerBase, text_tokenizer: PreTrainedTokenizerBase
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.text_tokenizer = text_tokenizer
        self.codec = config.codec()
        self.vocab = prepare_llm_tokenizer(tokenizer, self.codec)
        self.num_image_tokens = config.tokenizer.num_queries
        self.image_id = self.vocab.token_to_id(tk.IMAGE)
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id
        self.mean = torch.tensor(config.image_mean).view(3, 1, 1)
        self.std = torch.tensor(config.image_std).view(3, 1, 1)
        self.default_classes = tuple(config.tokenizer.default_classes)
        self.default_inputs: dict[str, Tensor] | None = None
        if self.default_classes:
            with torch.device("cpu"):  # inputs, not weights: also when the model is built on the meta device
                self.default_inputs = self.encoder_inputs([". ".join(self.default_classes)], [self.default_classes])
            if not bool(self.default_inputs["phrase_mask"].all()):
                raise ProcessorError(
                    f"tokenizer.default_classes do not all fit in text_encoder.max_length "
                    f"({self.config.text_encoder.max_length} tokens)"
                )

    def default_class_ids(self) -> list[list[int]]:
        """The LLM's token ids of each default class phrase (how the LLM reads the model's own classes)."""
        return [self._ids(phrase) for phrase in self.default_classes]

    # -- images -------------------------------------------------------------------------------

    def image(self, image: Image.Image | np.ndarray | str | Path) -> ImageInput:
        """Load (if a path), convert to RGB, resize to S x S and normalise."""
        if isinstance(image, str | Path):
            path = Path(image)
            if not path.exists():
                raise FileNotFoundError(f"image {path} not found")
            try:
                image = Image.open(path)
                image.load()
            except OSError as error:
                raise ProcessorError(f"{path} is not an image PIL can read: {error}") from None
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3) or image.dtype != np.uint8:
                raise ProcessorError(
                    f"an image array must be (H, W) or (H, W, C) uint8, got {image.shape} {image.dtype}"
                )
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise ProcessorError(f"expected a PIL image, an array or a path, got {type(image).__name__}")
        return normalise_image(image, self.config.image_size, self.mean, self.std)

    # -- text ---------------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text.strip() else []

    def prefix_ids(self, instruction: str) -> list[int]:
        """[bos] + instruction with its one <image> expanded into M placeholders."""
        count = instruction.count(tk.IMAGE)
        if count != 1:
            raise ProcessorError(f"an instruction must contain {tk.IMAGE} exactly once, found {count}: {instruction!r}")
        before, after = instruction.split(tk.IMAGE)
        return [self.bos_id, *self._ids(before), *[self.image_id] * self.num_image_tokens, *self._ids(after)]

    def prompt_ids(
        self, instruction: str, class_names: Sequence[str] = (), max_prompt_tokens: int | None = None
    ) -> list[int]:
        """`prefix_ids` of a user's instruction, once it is known that the model can answer it at a bounded cost.

        Args:
            instruction: the instruction text, with one <image>.
            class_names: the classes it binds to <c0>, <c1>, ...
            max_prompt_tokens: a lower limit than the model's `decoder.max_prompt_tokens` (a server's), or None.

        Raises:
            ProcessorError: text that is not valid Unicode, more classes than the model has class tokens, a class
                token the model does not have, no or several <image>, or more instruction tokens than the limit.
        """
        check_text(instruction, "the instruction")  # the bound class names are part of its text
        max_classes = self.config.decoder.max_classes
        if len(class_names) > max_classes:
            raise ProcessorError(
                f"the instruction binds {len(class_names)} classes; this model has class tokens for at most "
                f"{max_classes} (<c0>..<c{max_classes - 1}>): ask for fewer classes at a time"
            )
        unknown = sorted({int(i) for i in _CLASS_TOKEN.findall(instruction) if int(i) >= max_classes})
        if unknown:
            raise ProcessorError(
                f"the instruction uses the class token <c{unknown[0]}>; this model has <c0>..<c{max_classes - 1}>"
            )
        limit = self.config.decoder.max_prompt_tokens
        if max_prompt_tokens is not None:
            limit = min(limit, max_prompt_tokens)
        if len(instruction) > limit * MAX_CHARS_PER_TOKEN:
            raise ProcessorError(
                f"the instruction is {len(instruction)} characters long, over the limit of {limit} tokens "
                f"({limit * MAX_CHARS_PER_TOKEN} characters at most): shorten it"
            )
        ids = self.prefix_ids(instruction)
        length = len(ids) - self.num_image_tokens
        if length > limit:
            raise ProcessorError(
                f"the instruction is {length} tokens long, over the limit of {limit} tokens: shorten it"
            )
        return ids

    def header_ids(self, fmt: OutputFormat) -> list[int]:
        return self.vocab.encode(fmt.header_tokens())

    def text_answer_ids(self, text: str) -> list[int]:
        return [*self._ids(text), self.eos_id]

    def slot_tokens(self, fmt: OutputFormat) -> list[str]:
        """The query tokens of one slot: <cls> <x1> <y1> ... <xN> <yN>."""
        return [tk.CLS, *(t for i in range(1, fmt.num_points + 1) for t in (tk.x_token(i), tk.y_token(i)))]

    def num_slots(self, fmt: OutputFormat) -> int:
        """K: slots per answer, limited by M and by the slot-token budget."""
        return max(1, min(self.num_image_tokens, self.config.decoder.max_slot_tokens // fmt.slot_length))

    def add_slot_groups(self, row: Segments, fmt: OutputFormat, count: int | None = None) -> Segments:
        """Append an answer's slot groups to `row`: `count` (default K) groups of its query tokens <cls> <x1> ..."""
        slot = self.vocab.encode(self.slot_tokens(fmt))
        for group in range(self.num_slots(fmt) if count is None else count):
            row.add(slot, group=group)
        return row

    def encoder_inputs(self, instructions: Sequence[str], class_sets: Sequence[Sequence[str]]) -> dict[str, Tensor]:
        """The text encoder's inputs: the instructions without <image> and without the codec's tokens (the class
        tokens of a binding mean nothing to the encoder and would cost it several word pieces each), padded, and
        where each bound class phrase lies in them.

        Returns:
            input_ids, attention_mask: (B, L).
            phrase_weights: (B, C, L) averaging weights over each class phrase's tokens (C >= 1).
            phrase_mask: (B, C) whether the phrase was found (it may be cut off by `max_length`).
        """
        texts = [" ".join(_CODEC_TOKEN.sub(" ", text).split()).replace(" ,", ",") for text in instructions]
        encoded = self.text_tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.config.text_encoder.max_length,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        width = max([1, *(len(c) for c in class_sets)])
        weights = torch.zeros(len(texts), width, encoded.input_ids.shape[1])
        found = torch.zeros(len(texts), width, dtype=torch.bool)
        starts, ends = encoded.offset_mapping[..., 0], encoded.offset_mapping[..., 1]
        real = (ends > starts) & encoded.attention_mask.bool()
        for b, (text, classes) in enumerate(zip(texts, class_sets, strict=True)):
            cursor = 0
            for c, name in enumerate(classes):
                span = _phrase_span(text, name, cursor)
                if span is None:
                    continue
                cursor = span[1]
                inside = real[b] & (starts[b] < span[1]) & (ends[b] > span[0])
                if inside.any():
                    weights[b, c, inside] = 1.0 / inside.sum()
                    found[b, c] = True
        return {
            "input_ids": encoded.input_ids,
            "attention_mask": encoded.attention_mask,
            "phrase_weights": weights,
            "phrase_mask": found,
        }

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder / "tokenizer")


def _phrase_span(text: str, name: str, start: int) -> tuple[int, int] | None:
    """Character span of a class name in the encoder's text from `start` on: its quoted binding entry
    ("name": <ci> with the token removed) when there is one, else its first occurrence."""
    quoted = json.dumps(name, ensure_ascii=False)
    at = text.find(quoted + ":", start)
    if at >= 0:
        return at + 1, at + len(quoted) - 1
    at = text.find(name, start)
    return (at, at + len(name)) if at >= 0 and name else None
