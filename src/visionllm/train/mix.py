"""The task mix of a training stage (`train.mix` in a preset), whatever the model version."""

from __future__ import annotations

from dataclasses import dataclass, field

from visionllm.config import ConfigError


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
