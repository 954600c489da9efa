"""One-call task helpers over a model's `predict`, the same for both versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from visionllm.formats.results import Detections
from visionllm.formats.task_table import Instruction, build_instruction
from visionllm.formats.tasks import Task


class TaskHelpers:
    """`detect`, `segment`, `ground`, `keypoints`, `caption` and `ask` for a class that has `predict(images,
    instructions, min_score, ...)` and `config.codec()`."""

    def _one(self, image: Any, instruction: Instruction, min_score: float = 0.05, **options: Any) -> Any:
        return self.predict([image], [instruction], min_score, **options)[0].prediction  # type: ignore[attr-defined]

    def _codec(self):
        return self.config.codec()  # type: ignore[attr-defined]

    def detect(self, image: Any, classes: Sequence[str], min_score: float = 0.05) -> Detections:
        """Objects of any class set, as boxes in the image's pixels."""
        return self._one(image, build_instruction(Task.DETECTION, classes=classes, config=self._codec()), min_score)

    def segment(self, image: Any, classes: Sequence[str], points: int = 16, min_score: float = 0.05) -> Detections:
        """Instances of any class set with their outlines (v1: polygons of `points` boundary points; v2: masks)."""
        instruction = build_instruction(
            Task.INSTANCE_SEGMENTATION, classes=classes, num_points=points, config=self._codec()
        )
        return self._one(image, instruction, min_score)

    def ground(self, image: Any, expression: str) -> Detections:
        """The one object a referring expression names (empty if none)."""
        return self._one(image, build_instruction(Task.GROUNDING, expression=expression, config=self._codec()), 0.0)

    def keypoints(self, image: Any, min_score: float = 0.05) -> Detections:
        """People with their 17 COCO keypoints."""
        return self._one(image, build_instruction(Task.KEYPOINTS, config=self._codec()), min_score)

    def caption(self, image: Any) -> str:
        return self._one(image, build_instruction(Task.CAPTION)).text

    def ask(self, image: Any, question: str) -> str:
        return self._one(image, build_instruction(Task.VQA, question=question)).text
