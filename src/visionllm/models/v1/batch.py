"""Training examples and their collation into one model batch (any mix of tasks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from visionllm.formats.codec import OutputFormat
from visionllm.formats.tasks import Task
from visionllm.models.common.inputs import ImageInput
from visionllm.models.common.sequence import Segments, pad_segments
from visionllm.models.v1.decoder import SlotTargets
from visionllm.models.v1.processor import VisionLLMProcessor


@dataclass
class Example:
    """One training sample, in pixels of the original image.

    Attributes:
        image: the preprocessed image and its original size.
        instruction: the instruction text, with <image> once.
        task: the task.
        fmt: the answer format.
        class_names: the bound classes (structured formats).
        answer: the text answer (text formats).
        class_index: (T,) targets' class indices into class_names.
        points_xy_px: (T, N, 2) targets' points (box corners, polygon points or keypoints).
        visible: (T, N) bool, False for keypoints to be answered <p-inv>.
        token_boxes_xyxy_px: (T', 4) boxes the image tokens should find (the objects the instruction is about).
        token_class_index: (T',) their classes for the tokenizer, for text answers (indices into the model's
            default classes); structured answers use class_index.
        branches: further (instruction, answer) pairs on the same image (text answers), answered in parallel:
            the instructions must equal the first one up to and including the image (the same template, another
            question). The image and that shared prefix are encoded once; each branch sees the sequence a single
            instruction would.
    """

    image: ImageInput
    instruction: str
    task: Task
    fmt: OutputFormat
    class_names: tuple[str, ...] = ()
    answer: str | None = None
    class_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    points_xy_px: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))
    visible: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    token_boxes_xyxy_px: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    token_class_index: np.ndarray | None = None
    branches: tuple[tuple[str, str], ...] = ()


@dataclass
class Batch:
    """Model inputs for B samples (right-padded sequences).

    Attributes:
        pixel_values: (B, 3, S, S).
        image_sizes: (B, 2) original (W, H).
        text_input_ids, text_attention_mask: (B, Lt) the text encoder's input.
        phrase_weights, phrase_mask: (B, C, Lt) / (B, C) where each bound class phrase lies in that input.
        input_ids: (B, L) LLM ids: prefix with M <image> placeholders, header, then answer text or slot queries
            (or, for a text example with branches, the shared prefix then each branch's rest, header and answer).
        kinds: (B, L) PAD / SEQUENCE / SLOT; SLOT marks the positions of parallel groups: the slots of a
            structured answer, or the branches of a text example.
        groups: (B, L) group (slot or branch) number of SLOT positions, -1 elsewhere.
        slot_offsets: (B, L) position of a token inside its group.
        labels: (B, L) the id each position holds where it is to be predicted (header and text answer), else -100.
        formats, class_counts: per sample, the answer format and the number of bound classes.
        slot_targets: per sample, SlotTargets (structured formats) or None.
        token_targets: per sample, (T, 4) cxcywh boxes in [0, 1] for L_tok.
        token_classes: per sample, (T,) their class indices (0 for instructions without classes).
    """

    pixel_values: Tensor
    image_sizes: Tensor
    text_input_ids: Tensor
    text_attention_mask: Tensor
    phrase_weights: Tensor
    phrase_mask: Tensor
    input_ids: Tensor
    kinds: Tensor
    groups: Tensor
    slot_offsets: Tensor
    labels: Tensor
    formats: list[OutputFormat]
    class_counts: list[int]
    slot_targets: list[SlotTargets | None]
    token_targets: list[Tensor]
    token_classes: list[Tensor]

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        moved["token_targets"] = [t.to(device) for t in self.token_targets]
        moved["token_classes"] = [t.to(device) for t in self.token_classes]
        return Batch(**moved)

    def __len__(self) -> int:
        return len(self.formats)

    def encoder_inputs(self) -> dict[str, Tensor]:
        return {
            "input_ids": self.text_input_ids,
            "attention_mask": self.text_attention_mask,
            "phrase_weights": self.phrase_weights,
            "phrase_mask": self.phrase_mask,
        }


def collate(examples: Sequence[Example], processor: VisionLLMProcessor) -> Batch:
    """Build one batch; ids are assembled segment by segment, so labels line up by construction."""
    rows: list[Segments] = []
    slot_targets: list[SlotTargets | None] = []
    token_targets, token_classes = [], []
    for ex in examples:
        prefix = processor.prefix_ids(ex.instruction)
        header = processor.header_ids(ex.fmt)
        w, h = ex.image.size_wh
        scale = np.array([w, h], dtype=np.float64)
        if ex.fmt.structured:
            row = processor.add_slot_groups(Segments().add(prefix).add(header, labelled=True), ex.fmt)
            points = np.asarray(ex.points_xy_px, dtype=np.float64).reshape(len(ex.class_index), ex.fmt.num_points, 2)
            slot_targets.append(
                SlotTargets(
                    class_index=torch.as_tensor(np.asarray(ex.class_index), dtype=torch.long),
                    points=torch.as_tensor(points / scale, dtype=torch.float32),
                    visible=torch.as_tensor(np.asarray(ex.visible, dtype=bool).reshape(len(points), -1)),
                )
            )
        else:
            if ex.answer is None:
                raise ValueError(f"a {ex.task.value} example needs an answer text")
            row = _text_row(ex, prefix, header, processor)
            slot_targets.append(None)
        rows.append(row)
        boxes = np.asarray(ex.token_boxes_xyxy_px, dtype=np.float64).reshape(-1, 4) / np.tile(scale, 2)
        cxcywh = np.stack(
            [
                (boxes[:, 0] + boxes[:, 2]) / 2,
                (boxes[:, 1] + boxes[:, 3]) / 2,
                boxes[:, 2] - boxes[:, 0],
                boxes[:, 3] - boxes[:, 1],
            ],
            axis=1,
        )
        token_targets.append(torch.as_tensor(np.clip(cxcywh, 0, 1), dtype=torch.float32))
        if ex.fmt.structured and len(boxes) != len(ex.class_index):
            raise ValueError(
                f"a {ex.task.value} example needs one token box per target ({len(boxes)} != {len(ex.class_index)})"
            )
        if ex.fmt.structured:
            classes = np.asarray(ex.class_index)
        elif ex.token_class_index is not None:
            classes = np.asarray(ex.token_class_index)
        else:
            classes = np.zeros(len(boxes))
        token_classes.append(torch.as_tensor(classes, dtype=torch.long))
    encoder = processor.encoder_inputs([ex.instruction for ex in examples], [ex.class_names for ex in examples])
    return Batch(
        pixel_values=torch.stack([ex.image.pixels for ex in examples]),
        image_sizes=torch.tensor([ex.image.size_wh for ex in examples], dtype=torch.float32),
        text_input_ids=encoder["input_ids"],
        text_attention_mask=encoder["attention_mask"],
        phrase_weights=encoder["phrase_weights"],
        phrase_mask=encoder["phrase_mask"],
        **pad_segments(rows, processor.pad_id),
        formats=[ex.fmt for ex in examples],
        class_counts=[len(ex.class_names) for ex in examples],
        slot_targets=slot_targets,
        token_targets=token_targets,
        token_classes=token_classes,
    )


def _text_row(ex: Example, prefix: list[int], header: list[int], processor: VisionLLMProcessor) -> Segments:
    """A text example: one sequence, or, with branches, the prefix the instructions share followed by one group per
    (instruction, answer), each holding the rest of its instruction, the header and the answer (so that each group's
    positions are those of a single sequence)."""
    answer = processor.text_answer_ids(ex.answer or "")
    if not ex.branches:
        return Segments().add(prefix).add(header, labelled=True).add(answer, labelled=True)
    prefixes = [prefix, *(processor.prefix_ids(text) for text, _ in ex.branches)]
    answers = [answer, *(processor.text_answer_ids(text) for _, text in ex.branches)]
    shared = min(len(p) for p in prefixes) - 1  # every group keeps one instruction token: labels never cross groups
    for i in range(shared):
        if any(p[i] != prefix[i] for p in prefixes):
            shared = i
            break
    if processor.image_id in (token for p in prefixes for token in p[shared:]):
        raise ValueError(
            f"the branches of a {ex.task.value} example must share the instruction up to and including the image; "
            f"{[text for text, _ in ex.branches]!r} differ from {ex.instruction!r} before it"
        )
    row = Segments().add(prefix[:shared])
    for g, (p, a) in enumerate(zip(prefixes, answers, strict=True)):
        row.add(p[shared:], group=g).add(header, labelled=True, group=g).add(a, labelled=True, group=g)
    return row
