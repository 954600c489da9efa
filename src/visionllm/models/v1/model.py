"""VisionLLM v1, composed in one place: backbone -> text encoder -> language-guided tokenizer -> LLM.

    model = VisionLLM.from_pretrained("checkpoints/visionllm-v1-tiny")
    model.detect("image.png", ["red circle", "star"])          # Detections, pixels of the image
    model.predict(images, instructions)                         # any mix of tasks in one batch

Training: `model(batch)` returns the losses (L = L_tok + L_dec) of a `Batch` from `batch.collate`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from visionllm.config import ConfigError, VisionLLMConfig
from visionllm.formats import tokens as tk
from visionllm.formats.codec import OutputFormat, decode_slots, parse_class_binding, parse_format_header
from visionllm.formats.results import Decoded, Detections, Dropped, TextAnswer
from visionllm.formats.task_table import Instruction, tasks_of_version
from visionllm.formats.tasks import Task
from visionllm.models.common.backbone import Backbone
from visionllm.models.common.checkpoint import (
    CONFIG_NAME,
    TOKENIZER_DIR,
    WEIGHTS_NAME,
    CheckpointError,
    one_line,
    read_config,
    read_tokenizer,
    read_weights,
    write_weights,
)
from visionllm.models.common.helpers import TaskHelpers
from visionllm.models.common.inputs import ImageInput
from visionllm.models.common.llm import configured_tokenizer
from visionllm.models.common.sequence import (
    IGNORE,
    PAD,
    SEQUENCE,
    SLOT,
    Segments,
    block_mask,
    pad_segments,
    slot_positions,
)
from visionllm.models.common.text_encoder import TextEncoder, load_text_tokenizer
from visionllm.models.v1.batch import Batch, Example, collate
from visionllm.models.v1.data import TaskMixture
from visionllm.models.v1.decoder import LanguageDecoder, SlotOutputs, select_anchor_tokens
from visionllm.models.v1.processor import VisionLLMProcessor
from visionllm.models.v1.tokenizer import LanguageGuidedTokenizer, TokenizerOutput, arrange_tokens
from visionllm.ops.boxes import nms
from visionllm.train.distributed import global_count
from visionllm.train.mix import MixConfig

logger = logging.getLogger(__name__)

ImageLike = Image.Image | np.ndarray | str | Path


class VisionLLM(nn.Module, TaskHelpers):
    """VisionLLM v1.

    Args:
        config: the model config.
        tokenizer: the LLM tokenizer (the codec tokens are added if missing); None builds it from the config.
        load_weights: load pretrained component weights named in the config (False when a checkpoint follows).
    """

    version = 1

    TASKS = tuple(tasks_of_version(1))
    """The tasks this model answers (the task table's v1 tasks)."""

    config_class = VisionLLMConfig
    """The config a preset's `model:` section is read into."""

    def __init__(
        self, config: VisionLLMConfig, tokenizer: PreTrainedTokenizerBase | None = None, load_weights: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone, load_weights)
        self.text_encoder = TextEncoder(config.text_encoder, load_weights)
        text_tokenizer = load_text_tokenizer(config.text_encoder)
        self.processor = VisionLLMProcessor(config, tokenizer or _llm_tokenizer(config), text_tokenizer)
        self.tokenizer = LanguageGuidedTokenizer(
            config.tokenizer, self.backbone.channels, self.text_encoder.hidden_size
        )
        self.decoder = LanguageDecoder(
            config.llm,
            config.decoder,
            self.processor.vocab,
            len(self.processor.tokenizer),
            config.tokenizer.d_model,
            self.processor.default_class_ids(),
            load_weights,
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- shared front -------------------------------------------------------------------------

    def encode_images(self, pixel_values: Tensor, encoder: dict[str, Tensor]) -> tuple[TokenizerOutput, Tensor]:
        """Image tokens for (image, instruction) pairs: the tokenizer's output and the tokens in LLM space.

        The tokens are put in the order a viewer reads the image (`arrange_tokens`) and carry their class
        evidence: the bound classes' tokens, or the model's default classes in words for instructions that bind
        none (captioning, VQA), so that text answers can name what the tokens found.

        Args:
            pixel_values: (B, 3, S, S).
            encoder: the processor's `encoder_inputs` (ids, mask, class-phrase positions).

        Returns:
            The arranged tokenizer output, and the (B, M, D) image tokens for the LLM.
        """
        tokens = self.tokenize(pixel_values, encoder)
        tokens, class_probs = arrange_tokens(tokens, self.config.decoder.duplicate_iou)
        bound = encoder["phrase_mask"].any(1)
        image_tokens = self.decoder.embed_image_tokens(tokens.embeddings, tokens.boxes.detach(), class_probs, bound)
        return tokens, image_tokens

    FREEZE_GROUPS = ("backbone", "tokenizer", "tokenizer_visual", "text_encoder", "llm")
    """The parts a training stage may keep fixed (`train.freeze`)."""

    VISUAL_PARTS = ("backbone", "tokenizer")
    """Top-level modules that train at `optim.visual_lr_scale` times the learning rate."""

    def freeze(self, groups: Sequence[str]) -> None:
        """Keep these parts fixed: backbone, tokenizer (all of it), tokenizer_visual (the tokenizer but its text
        fusion), text_encoder, llm.

        Raises:
            ValueError: a group this model does not have.
        """
        unknown = sorted(set(groups) - set(self.FREEZE_GROUPS))
        if unknown:
            raise ValueError(f"unknown freeze group(s) {unknown}; groups: {list(self.FREEZE_GROUPS)}")
        if "backbone" in groups:
            self.backbone.requires_grad_(False)
        if "text_encoder" in groups:
            self.text_encoder.requires_grad_(False)
        if "llm" in groups:
            self.decoder.lm.requires_grad_(False)
        if "tokenizer" in groups:
            self.tokenizer.requires_grad_(False)
        if "tokenizer_visual" in groups:
            # Every parameter of the tokenizer, its own (class bias, level embedding, ...) as well as its modules',
            # but those of its text fusion.
            for name, param in self.tokenizer.named_parameters():
                if name.split(".")[0] not in ("text_proj", "fusion"):
                    param.requires_grad_(False)

    @property
    def visual_frozen(self) -> bool:
        """Whether nothing before the image tokens' projection trains (backbone, text encoder, tokenizer): their
        pass then runs without a graph and L_tok is not computed."""
        parts = (self.backbone, self.text_encoder, self.tokenizer)
        return not any(p.requires_grad for part in parts for p in part.parameters())

    def tokenize(self, pixel_values: Tensor, encoder: dict[str, Tensor]) -> TokenizerOutput:
        """The language-guided tokenizer's output for (image, instruction) pairs (no LLM involved)."""
        if self.training and self.visual_frozen:
            with torch.no_grad():
                return self._tokenize(pixel_values, encoder)
        return self._tokenize(pixel_values, encoder)

    def _tokenize(self, pixel_values: Tensor, encoder: dict[str, Tensor]) -> TokenizerOutput:
        features = self.backbone(pixel_values)
        text = self.text_encoder(encoder["input_ids"], encoder["attention_mask"])
        defaults = None
        if self.processor.default_inputs is not None and not bool(encoder["phrase_mask"].any(1).all()):
            own = {k: v.to(pixel_values.device) for k, v in self.processor.default_inputs.items()}
            defaults = (self.text_encoder(own["input_ids"], own["attention_mask"]), own["phrase_weights"])
        return self.tokenizer(
            features, text, encoder["attention_mask"], encoder["phrase_weights"], encoder["phrase_mask"], defaults
        )

    # -- training -----------------------------------------------------------------------------

    def forward(
        self, batch: Batch, tokenizer_loss_weight: float = 1.0, tokenizer_only: bool = False
    ) -> dict[str, Tensor]:
        """Losses of a batch: `loss` (total) and its parts.

        Args:
            batch: from `batch.collate`.
            tokenizer_loss_weight: weight of L_tok in L = L_tok + L_dec.
            tokenizer_only: L_tok alone, without the LLM (the image tokenizer trained as a detector).
        """
        if tokenizer_only:
            l_tok = self.tokenizer.loss(
                self.tokenize(batch.pixel_values, batch.encoder_inputs()), batch.token_targets, batch.token_classes
            )
            return {"loss": tokenizer_loss_weight * l_tok, "tokenizer": l_tok.detach()}
        tokens, image_tokens = self.encode_images(batch.pixel_values, batch.encoder_inputs())
        if self.visual_frozen:
            l_tok = image_tokens.new_zeros(())
        else:
            l_tok = self.tokenizer.loss(tokens, batch.token_targets, batch.token_classes)
        anchors = [
            select_anchor_tokens(tokens.logits[b : b + 1].detach(), self.processor.num_slots(fmt))[0]
            if fmt.structured
            else None
            for b, fmt in enumerate(batch.formats)
        ]
        hidden = self.sequence_hidden(batch, image_tokens, anchors)
        text_loss = self._text_loss(hidden, batch.labels, batch.groups)
        slot_losses = []
        parts: dict[str, Tensor] = {}
        for b, fmt in enumerate(batch.formats):
            if anchors[b] is None:
                continue
            outputs = self._slot_outputs(hidden[b], batch.kinds[b], fmt, batch.class_counts[b], anchors[b], tokens, b)
            loss, info = self.decoder.slot_loss(outputs, batch.slot_targets[b], fmt)
            slot_losses.append(loss)
            for key, value in info.items():
                parts[key] = parts.get(key, 0) + value / len(batch)
        divisor = global_count(len(slot_losses), hidden.device)  # structured answers in the global batch
        slot_loss = torch.stack(slot_losses).sum() / divisor if slot_losses else hidden.new_zeros(())
        total = tokenizer_loss_weight * l_tok + text_loss + slot_loss
        return {
            "loss": total,
            "tokenizer": l_tok.detach(),
            "text": text_loss.detach(),
            "slots": slot_loss.detach(),
            **parts,
        }

    def _text_loss(self, hidden: Tensor, labels: Tensor, groups: Tensor) -> Tensor:
        """Cross-entropy of the positions with labels (format headers and text answers).

        Per answer (the default): each answer's tokens are averaged first, then the answers, so that an answer
        counts once whatever its length, and the 5 to 35 header tokens of a structured answer do not outweigh the
        few words of a text answer. An answer is a sample's sequence, or one branch of it (`groups`).
        """
        targets = labels[:, 1:]
        selected = targets != IGNORE
        tokens = int(selected.sum())
        weight, count = torch.ones(tokens, device=hidden.device), tokens  # each labelled token's share, and of what
        if self.config.decoder.text_loss_per_sample:
            rows = torch.arange(len(labels), device=labels.device)[:, None].expand_as(targets)
            answer = (rows * (groups.shape[1] + 1) + groups[:, 1:] + 1)[selected]
            _, answer, counts = torch.unique(answer, return_inverse=True, return_counts=True)
            weight, count = 1.0 / counts[answer].float(), len(counts)
        # answers (or tokens) over the global batch of a distributed run: every process asks, even one without
        divisor = global_count(count, hidden.device)
        if not selected.any():
            return hidden.new_zeros(())
        logits = self.decoder.vocab_logits(hidden[:, :-1][selected])
        losses = F.cross_entropy(logits.float(), targets[selected], reduction="none")
        return (losses * weight).sum() / divisor

    def sequence_hidden(self, batch: Batch, image_tokens: Tensor, anchors: Sequence[Tensor | None]) -> Tensor:
        """The LLM's last hidden states (B, L, D) for a batch whose slot groups are anchored at `anchors`
        (per sample, the image-token index of each slot; None for text answers)."""
        embeds = self.decoder.input_embeddings(batch.input_ids, image_tokens)
        slot_add = torch.zeros_like(embeds)
        for b, index in enumerate(anchors):
            if index is None:
                continue
            length = batch.formats[b].slot_length
            positions = (batch.kinds[b] == SLOT).nonzero().squeeze(1).view(len(index), length)
            slot_add[b, positions] = image_tokens[b, index].unsqueeze(1).expand(-1, length, -1).to(slot_add.dtype)
        mask = block_mask(batch.kinds, batch.groups).unsqueeze(1)
        positions = slot_positions(batch.kinds, batch.groups, batch.slot_offsets)
        hidden, _ = self.decoder.run(embeds + slot_add, mask, positions)
        return hidden

    def _slot_outputs(
        self,
        hidden: Tensor,
        kinds: Tensor,
        fmt: OutputFormat,
        num_bound: int,
        index: Tensor,
        tokens: TokenizerOutput,
        b: int,
    ) -> SlotOutputs:
        """Slot logits of sample b, whose K slots are anchored at image tokens `index`; the anchors' class
        logits from the tokenizer are the prior of the slots' classes."""
        k = len(index)
        slot_hidden = hidden[kinds == SLOT].view(k, fmt.slot_length, -1)
        prior = tokens.class_logits[b, index, :num_bound].detach()
        class_logits, coord_logits = self.decoder.slot_logits(slot_hidden, fmt, num_bound, prior)
        return SlotOutputs(class_logits, coord_logits, tokens.boxes[b, index, :2].detach().float(), index)

    # -- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[ImageLike],
        instructions: Sequence[str | Instruction],
        min_score: float = 0.05,
        on_text: Callable[[int, str], None] | None = None,
    ) -> list[Decoded]:
        """Answer a batch of (image, instruction) pairs; tasks may be mixed freely.

        Args:
            images: PIL images, uint8 arrays or paths.
            instructions: instruction texts (class sets are read from their {"name": <c0>, ...} binding), or
                `Instruction`s from `build_instruction` (which also say which format to expect).
            min_score: structured results with a lower class probability are left out.
            on_text: called as `on_text(i, delta)` while pair i's text answer grows, with the new characters
                (for streaming); the deltas of a pair add up to its final answer.

        Returns:
            One `Decoded` per pair: typed `Detections` (pixels of the input image) or `TextAnswer`, with what
            decoding dropped.
        """
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        if not images:
            return []
        was_training = self.training
        self.eval()
        try:
            return self._predict([self.processor.image(im) for im in images], list(instructions), min_score, on_text)
        finally:
            self.train(was_training)

    # -- training data ------------------------------------------------------------------------

    def training_stream(
        self, root: str | Path, split: str, mix: MixConfig, seed: int = 0, batch_size: int = 1
    ) -> torch.utils.data.Dataset:
        """The training examples of a task mix over a ShapesWorld split: example i is a function of (seed, i)."""
        return TaskMixture(
            root,
            split,
            self.processor,
            mix,
            seed=seed,
            batch_size=batch_size,
            default_classes=self.config.tokenizer.default_classes,
        )

    def collate(self, examples: Sequence[Example]) -> Batch:
        """One model batch from examples of `training_stream` (any mix of tasks)."""
        return collate(examples, self.processor)

    @property
    def header_limit(self) -> int:
        """Most tokens a format header can take (<fmt> <kpt> <cls> <x1> <y1> ... </fmt>)."""
        return 2 * self.config.decoder.max_points + 4

    def check_request(self, instruction: str | Instruction, max_prompt_tokens: int | None = None) -> int:
        """Check, without model work, that `predict` can answer this instruction; its cost in LLM tokens.

        Args:
            instruction: as for `predict`.
            max_prompt_tokens: a lower limit on the instruction's tokens than the model's own, or None.

        Returns:
            The most tokens the LLM runs for it: the prompt with its image tokens, the format header and the
            longest answer (text tokens or slot tokens).

        Raises:
            ProcessorError: what `predict` would refuse (see `VisionLLMProcessor.prompt_ids`).
        """
        if isinstance(instruction, Instruction):
            text, classes = instruction.text, instruction.class_names
        else:
            text, classes = instruction, _bound_classes(instruction)
        prompt = len(self.processor.prompt_ids(text, classes, max_prompt_tokens))
        decoder = self.config.decoder
        header = self.header_limit
        fmt = instruction.output_format if isinstance(instruction, Instruction) else None
        if fmt is not None and fmt.structured:
            answer = self.processor.num_slots(fmt) * fmt.slot_length
        elif fmt is not None:
            answer = decoder.max_new_tokens
        else:
            answer = max(decoder.max_new_tokens, decoder.max_slot_tokens)
        return prompt + header + answer

    def _predict(
        self,
        images: list[ImageInput],
        requests: list[str | Instruction],
        min_score: float,
        on_text: Callable[[int, str], None] | None,
    ) -> list[Decoded]:
        device = self.device
        texts = [r.text if isinstance(r, Instruction) else r for r in requests]
        expected = [r.output_format if isinstance(r, Instruction) else None for r in requests]
        class_sets = [r.class_names if isinstance(r, Instruction) else _bound_classes(r) for r in requests]
        grounding = [isinstance(r, Instruction) and r.task is Task.GROUNDING for r in requests]
        prefixes = [self.processor.prompt_ids(t, c) for t, c in zip(texts, class_sets, strict=True)]
        encoder = self.processor.encoder_inputs(texts, class_sets)
        pixels = torch.stack([im.pixels for im in images]).to(device)
        tokens, image_tokens = self.encode_images(pixels, {k: v.to(device) for k, v in encoder.items()})
        batch = len(images)
        pad = self.processor.pad_id
        prompt = pad_segments([Segments().add(p) for p in prefixes], pad, side="left")  # all rows end together
        input_ids, kinds, groups = (prompt[key].to(device) for key in ("input_ids", "kinds", "groups"))
        embeds = self.decoder.input_embeddings(input_ids, image_tokens)
        cache = DynamicCache()
        positions = slot_positions(kinds, groups, torch.zeros_like(kinds))
        hidden, cache = self.decoder.run(embeds, block_mask(kinds, groups).unsqueeze(1), positions, cache)
        kv_kinds, kv_groups = kinds, groups
        last = hidden[:, -1]

        vocab = self.processor.vocab
        header_allowed = torch.zeros(len(self.processor.tokenizer), dtype=torch.bool, device=device)
        header_tokens = [tk.FMT_OPEN, tk.FMT_CLOSE, tk.TEXT, tk.CLS, tk.KPT]
        header_tokens += [
            t for i in range(1, self.config.decoder.max_points + 1) for t in (tk.x_token(i), tk.y_token(i))
        ]
        header_allowed[vocab.encode(header_tokens)] = True
        text_allowed = torch.ones_like(header_allowed)
        text_allowed[vocab.offset : vocab.offset + len(vocab)] = False
        text_allowed[self.processor.eos_id] = True
        header_limit = self.header_limit
        fmt_close = vocab.token_to_id(tk.FMT_CLOSE)
        fmt_open_only = torch.zeros_like(header_allowed)
        fmt_open_only[vocab.token_to_id(tk.FMT_OPEN)] = True

        state = ["header"] * batch
        generated: list[list[int]] = [[] for _ in range(batch)]
        formats: list[OutputFormat | None] = [None] * batch
        notes: list[list[Dropped]] = [[] for _ in range(batch)]
        streamed = [""] * batch
        for _ in range(header_limit + self.config.decoder.max_new_tokens):
            if all(s in ("slots", "done") for s in state):
                break
            logits = self.decoder.vocab_logits(last).float()
            next_ids, fed = [], []
            for b in range(batch):
                token, feeds = pad, state[b] in ("header", "text")
                if state[b] == "header":
                    allowed = header_allowed if generated[b] else fmt_open_only
                    token = int(logits[b].masked_fill(~allowed, -torch.inf).argmax())
                    generated[b].append(token)
                    if token == fmt_close or len(generated[b]) >= header_limit:
                        formats[b] = self._read_header(generated[b], expected[b], notes[b])
                        generated[b] = []
                        state[b] = "slots" if formats[b].structured else "text"
                elif state[b] == "text":
                    token = int(logits[b].masked_fill(~text_allowed, -torch.inf).argmax())
                    if token == self.processor.eos_id:
                        state[b] = "done"
                    else:
                        generated[b].append(token)
                        if len(generated[b]) >= self.config.decoder.max_new_tokens:
                            state[b] = "done"
                        if on_text is not None:
                            streamed[b] = self._stream_text(b, generated[b], streamed[b], on_text)
                next_ids.append(token)
                fed.append(feeds)
            step_kinds = torch.tensor([[SEQUENCE if f else PAD] for f in fed], device=device)
            step_groups = torch.full_like(step_kinds, -1)
            all_kinds = torch.cat([kv_kinds, step_kinds], 1)
            all_groups = torch.cat([kv_groups, step_groups], 1)
            step_pos = (all_kinds == SEQUENCE).long().sum(1, keepdim=True) - 1
            step_embeds = self.decoder.embed_ids(torch.tensor(next_ids, device=device)[:, None])
            mask = block_mask(step_kinds, step_groups, all_kinds, all_groups).unsqueeze(1)
            hidden, cache = self.decoder.run(step_embeds, mask, step_pos.clamp(min=0), cache)
            kv_kinds, kv_groups = all_kinds, all_groups
            last = hidden[:, -1]

        results: list[Decoded | None] = [None] * batch
        for b in range(batch):
            if formats[b] is None:  # never finished its header within the budget
                formats[b] = self._read_header(generated[b], expected[b], notes[b])
            if not formats[b].structured:
                text = self.processor.decode_text(generated[b]) if state[b] != "slots" else ""
                if on_text is not None and text.startswith(streamed[b]) and text != streamed[b]:
                    on_text(b, text[len(streamed[b]) :])
                results[b] = Decoded(TextAnswer(text), tuple(notes[b]))
        structured = [b for b in range(batch) if formats[b].structured]
        if structured:
            decoded = self._decode_slots(
                structured, formats, class_sets, images, tokens, image_tokens, cache, kv_kinds, kv_groups, min_score
            )
            for b, result in decoded.items():
                if grounding[b] and isinstance(result.prediction, Detections) and len(result.prediction) > 1:
                    result = Decoded(result.prediction.select([0]), result.dropped)
                results[b] = Decoded(result.prediction, tuple(notes[b]) + result.dropped)
        return results  # type: ignore[return-value]

    def _stream_text(self, b: int, ids: list[int], sent: str, on_text: Callable[[int, str], None]) -> str:
        """Send what the text answer gained since `sent`; returns the text sent so far.

        Held back while the decoded text would rewrite what was sent (a word piece that merges with the one
        before) or ends in half a character.
        """
        text = self.processor.decode_text(ids)
        if text.startswith(sent) and len(text) > len(sent) and not text.endswith("\ufffd"):
            on_text(b, text[len(sent) :])
            return text
        return sent

    def _read_header(self, ids: list[int], expected: OutputFormat | None, notes: list[Dropped]) -> OutputFormat:
        tokens = self.processor.vocab.decode(ids)
        fmt = parse_format_header(tokens)
        if fmt is not None and fmt.num_points <= self.config.decoder.max_points:
            if expected is not None and fmt != expected:
                notes.append(
                    Dropped(
                        None, tuple(tokens), f"the model answered {fmt.kind.value}, not the asked {expected.kind.value}"
                    )
                )
            return fmt
        fallback = expected or OutputFormat.text()
        notes.append(Dropped(None, tuple(tokens), f"malformed format header: answered as {fallback.kind.value}"))
        return fallback

    def _decode_slots(
        self, samples, formats, class_sets, images, tokens, image_tokens, cache, kv_kinds, kv_groups, min_score
    ):
        device = self.device
        batch = len(formats)
        rows = [Segments() for _ in range(batch)]
        index: dict[int, Tensor] = {}
        for b in samples:
            index[b] = select_anchor_tokens(tokens.logits[b : b + 1], self.processor.num_slots(formats[b]))[0]
            self.processor.add_slot_groups(rows[b], formats[b], len(index[b]))
        slots = pad_segments(rows, self.processor.pad_id)
        ids, kinds, groups, offsets = (
            slots[key].to(device) for key in ("input_ids", "kinds", "groups", "slot_offsets")
        )
        embeds = self.decoder.embed_ids(ids)
        for b in samples:
            k, length = len(index[b]), formats[b].slot_length
            embeds[b, : k * length] += image_tokens[b, index[b]].repeat_interleave(length, dim=0)
        all_kinds = torch.cat([kv_kinds, kinds], 1)
        all_groups = torch.cat([kv_groups, groups], 1)
        start = (kv_kinds == SEQUENCE).long().sum(1, keepdim=True)
        positions = start + offsets
        mask = block_mask(kinds, groups, all_kinds, all_groups).unsqueeze(1)
        hidden, _ = self.decoder.run(embeds, mask, positions, cache)
        out = {}
        for b in samples:
            fmt = formats[b]
            classes = class_sets[b]
            num_bound = min(len(classes), self.config.decoder.max_classes)
            slots = self._slot_outputs(hidden[b], kinds[b], fmt, num_bound, index[b], tokens, b)
            out[b] = self._slots_to_result(
                slots.class_logits, slots.coord_logits, tokens.boxes[b, index[b]], fmt, classes, images[b], min_score
            )
        return out

    def _slots_to_result(
        self, class_logits, coord_logits, anchor_boxes, fmt, classes, image: ImageInput, min_score
    ) -> Decoded:
        """Slot logits -> tokens -> the codec's typed result (scores: the best bound class's probability)."""
        probs = class_logits.float().softmax(-1)
        if len(classes) == 0:
            return Decoded(Detections.empty(), (Dropped(None, (), "the instruction binds no classes"),))
        scores, best = probs[:, :-1].max(-1)
        r = self.config.decoder.coord_range
        coord_choice = coord_logits.float().argmax(-1)
        vocab_tokens = [tk.loc_token(v) for v in range(-r, r + 1)] + [tk.INVISIBLE]
        slots, kept_scores, anchors = [], [], []
        w, h = image.size_wh
        for k in range(len(scores)):
            if scores[k] < min_score:
                continue
            slot = [tk.class_token(int(best[k]))] + [vocab_tokens[int(i)] for i in coord_choice[k]]
            slots.append(slot)
            kept_scores.append(float(scores[k]))
            anchors.append([float(anchor_boxes[k, 0]) * w, float(anchor_boxes[k, 1]) * h])
        decoded = decode_slots(
            slots,
            fmt,
            classes,
            (w, h),
            self.config.codec(),
            anchors_xy_px=np.asarray(anchors).reshape(-1, 2),
            scores=kept_scores,
        )
        found = decoded.prediction
        if self.config.decoder.nms_iou is None or not isinstance(found, Detections) or len(found) < 2:
            return decoded
        keep = nms(found.boxes_xyxy_px, found.scores, self.config.decoder.nms_iou, labels=list(found.class_names))
        return Decoded(found.select(keep), decoded.dropped)

    # -- checkpoints --------------------------------------------------------------------------

    def referenced_parameters(self) -> set[str]:
        """Parameters not saved in checkpoints: frozen weights of a text encoder that a package or folder
        named in the config already provides."""
        if not self.config.text_encoder.pretrained:
            return set()
        return {f"text_encoder.{name}" for name in self.text_encoder.frozen_parameter_names()}

    def save_pretrained(
        self, folder: str | Path, dtype: torch.dtype | None = None, state_dict: dict[str, Tensor] | None = None
    ) -> Path:
        """Write config.json, model.safetensors and the tokenizer; files are replaced atomically. `state_dict`: the
        weights to write instead of the module's (gathered from a sharded run)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_weights(folder, self, self.referenced_parameters(), dtype, state_dict)
        config_tmp = folder / (CONFIG_NAME + ".tmp")
        self.config.save(config_tmp)
        config_tmp.replace(folder / CONFIG_NAME)
        self.processor.save(folder)
        return folder

    @classmethod
    def for_stage(cls, config: VisionLLMConfig, init_from: str | Path | None) -> VisionLLM:
        """The model a training stage starts from: a new one from the run's config (`init_from` None), or the
        `init_from` checkpoint with the run's own decoder settings (thresholds, loss and evidence options: those
        that do not change a weight's shape), so that a stage can change how the model decodes.

        Raises:
            ConfigError: the run changes a setting that sizes the vocabulary.
        """
        if init_from is None:
            return cls(config)
        model = cls.from_pretrained(init_from)
        ours, theirs = config.decoder, model.config.decoder
        shaped = [
            name
            for name in ("coord_range", "max_points", "max_classes")
            if getattr(ours, name) != getattr(theirs, name)
        ]
        if shaped:
            raise ConfigError(
                f"decoder.{', '.join(shaped)} of the run differ from {init_from}'s; they size the vocabulary, "
                "so a stage must keep its checkpoint's values"
            )
        for name, value in dataclasses.asdict(ours).items():  # in place: the decoder holds this same config object
            setattr(theirs, name, value)
        return model

    @staticmethod
    def loss_options(train: Any) -> dict[str, Any]:
        """The keyword arguments of `forward` a training stage sets (`TrainConfig`)."""
        return {"tokenizer_loss_weight": train.tokenizer_loss_weight, "tokenizer_only": train.tokenizer_only}

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> VisionLLM:
        """Rebuild a model from its folder alone (config.json, model.safetensors, tokenizer/)."""
        folder = Path(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR):
            if not (folder / name).exists():
                raise CheckpointError(f"{folder} is not a VisionLLM checkpoint: {name} is missing")
        config = read_config(folder, VisionLLMConfig)
        tokenizer = read_tokenizer(folder)
        try:
            model = cls(config, tokenizer=tokenizer, load_weights=False)
        except Exception as error:  # the components raise their own error types for impossible sizes
            raise CheckpointError(
                f"{folder / CONFIG_NAME} describes a model that cannot be built: {one_line(error)}"
            ) from None
        # Weights referenced by the config (frozen text-encoder layers) come from their source.
        if model.referenced_parameters():
            reference = TextEncoder(config.text_encoder, load_weights=True)
            model.text_encoder.load_state_dict(reference.state_dict())
        read_weights(folder, model, model.referenced_parameters())
        model.float()
        return model.to(device).eval()


def _llm_tokenizer(config: VisionLLMConfig) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer for a new model: a folder's, a vocabulary built from the instruction language, or the
    text encoder's."""
    tokenizer = configured_tokenizer(config.llm)
    return tokenizer if tokenizer is not None else load_text_tokenizer(config.text_encoder)


def _bound_classes(instruction: str) -> tuple[str, ...]:
    try:
        return parse_class_binding(instruction)
    except ValueError:
        return ()
