"""The task mix of a training stage (`train.mix` in a preset), whatever the model version."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from visionllm.config import ConfigError
from visionllm.data.sample import ObjectAnnotation
from visionllm.data.shapes.scene import COLORS, SHAPES


@dataclass
class MixConfig:
    """Which tasks to train and how often, and how class sets are drawn.

    Attributes:
        tasks: task name -> sampling weight.
        max_classes: largest class set in a detection / segmentation instruction.
        polygon_points: boundary point counts to ask for (drawn uniformly).
        negative_rate: expected share of absent classes in a class set.
        task_per_batch: the examples of one batch share their task (and polygon point count), so that a batch's
            sequences have one layout and one length: no padding, no mixed formats in one LLM pass.
        questions_per_image: a VQA example asks up to this many of its image's questions. They share the image,
            its tokens and the instruction up to the question, and are answered in parallel branches of one
            sequence (`batch.collate`), each seeing exactly what a single question sees: one image pass trains
            several answers. Templates that put the question before the image ask one.
    """

    tasks: dict[str, float] = field(default_factory=lambda: {"detection": 1.0})
    max_classes: int = 12
    polygon_points: list[int] = field(default_factory=lambda: [8, 16])
    negative_rate: float = 0.3
    task_per_batch: bool = True
    questions_per_image: int = 1

    def __post_init__(self) -> None:
        if self.questions_per_image < 1:
            raise ConfigError(f"mix.questions_per_image must be at least 1, not {self.questions_per_image}")


def majority_answer(answers: Sequence[str]) -> str:
    """The answer most annotators gave (the first of those tied)."""
    return Counter(answers).most_common(1)[0][0]


def class_phrase(obj: ObjectAnnotation, level: str) -> str:
    """An object's class phrase at a level: "pair" ("red circle"; people "person"), "shape" ("circle") or
    "category" (the category name as the annotation file gives it)."""
    if level == "category":
        return obj.category
    if obj.category == "person":
        return "person"
    return f"{obj.attributes.get('color', '')} {obj.category}".strip() if level == "pair" else obj.category


def draw_class_set(
    objects: Sequence[ObjectAnnotation], mix: MixConfig, rng: random.Random, categories: Sequence[str] | None = None
) -> tuple[list[str], str]:
    """An open class set for a detection or segmentation request on an image, and its level.

    Phrases are colour-shape pairs or shapes (people always "person"), drawn at one level so that no object
    answers two of them; with `categories` (a data set's category names), they are those names (level
    "category"). Most present classes are kept (a left-out one's objects are then not targets); absent
    classes join as negatives, about `mix.negative_rate` of the set; the order is random.
    """
    if categories is not None:
        level = "category"
        vocabulary = list(categories)
    else:
        level = rng.choice(["pair", "shape"])
        vocabulary = [f"{c} {s}" for c in COLORS for s in SHAPES] if level == "pair" else list(SHAPES)
        vocabulary.append("person")
    present = sorted({class_phrase(o, level) for o in objects})
    absent = [p for p in vocabulary if p not in present]
    limit = mix.max_classes
    keep = [p for p in present if rng.random() < 0.9] or present[:1]
    keep = keep[:limit]
    count_negative = min(len(absent), max(0, round(rng.expovariate(1 / max(len(keep) * mix.negative_rate, 0.5)))))
    classes = keep + rng.sample(absent, min(count_negative, limit - len(keep)))
    rng.shuffle(classes)
    return classes, level
