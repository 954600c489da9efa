"""The one sample type every reader produces, whatever public format it came from.

Coordinates are pixels of the image at `image_path` (x right, y down).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from visionllm.formats.tasks import Task


@dataclass(frozen=True, eq=False)
class ObjectAnnotation:
    """One annotated object.

    Attributes:
        box_xyxy_px: (x1, y1, x2, y2) in pixels.
        category: the category name (the class phrase a detection target uses).
        ann_id: the annotation id in its source file, when it has one.
        polygons_xy_px: the mask as polygons, each (P, 2) in pixels (COCO `segmentation` lists).
        rle: the mask as COCO RLE ({"size": [h, w], "counts": ...}) when the source stores RLE.
        keypoints_xyv: (K, 3) x, y in pixels and COCO visibility (0 unlabelled, 1 occluded, 2 visible).
        iscrowd: COCO's crowd flag.
        area: mask area in pixels as the source states it.
        attributes: extra named properties (ShapesWorld: color, size).
    """

    box_xyxy_px: tuple[float, float, float, float]
    category: str
    ann_id: int | None = None
    polygons_xy_px: tuple[np.ndarray, ...] = ()
    rle: Mapping[str, Any] | None = None
    keypoints_xyv: np.ndarray | None = None
    iscrowd: bool = False
    area: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = (float(v) for v in self.box_xyxy_px)
        if not (x2 >= x1 and y2 >= y1):
            raise ValueError(
                f"object {self.ann_id}: box {self.box_xyxy_px} is not (x1, y1, x2, y2) with x1<=x2, y1<=y2"
            )
        object.__setattr__(self, "box_xyxy_px", (x1, y1, x2, y2))
        if self.keypoints_xyv is not None:
            keypoints = np.asarray(self.keypoints_xyv, dtype=np.float64).reshape(-1, 3)
            object.__setattr__(self, "keypoints_xyv", keypoints)


@dataclass(frozen=True)
class QuestionAnswer:
    """A VQA question with its human answers (VQAv2 has ten)."""

    question: str
    answers: tuple[str, ...]
    question_id: int | None = None
    answer_type: str | None = None
    question_type: str | None = None


@dataclass(frozen=True)
class Turn:
    """One message of a conversation. `<image>` marks where the image goes in a user turn."""

    role: Literal["user", "assistant"]
    text: str


_REQUIRED: dict[Task, str] = {
    Task.CAPTION: "captions",
    Task.VQA: "qa",
    Task.CHAT: "conversation",
    Task.GROUNDING: "expressions",
    Task.SEMANTIC_SEGMENTATION: "semantic_mask_path",
}


@dataclass(frozen=True, eq=False)
class Sample:
    """An image with the annotations of one task.

    Attributes:
        task: what the annotations are for.
        image_path: where the image is (not opened by the readers).
        image_id: the id in the source file.
        width, height: image size in pixels when the source states it (LLaVA JSON does not).
        objects: detection / segmentation / keypoint targets; for grounding, the one referred object.
        captions: reference captions.
        expressions: referring expressions, all naming `objects[0]`.
        qa: a question with its answers.
        conversation: alternating user / assistant turns.
        semantic_mask_path: a PNG of per-pixel class ids.
        source: the format it was read from, e.g. "coco_instances".
    """

    task: Task
    image_path: Path
    image_id: int | str
    width: int | None = None
    height: int | None = None
    objects: tuple[ObjectAnnotation, ...] = ()
    captions: tuple[str, ...] = ()
    expressions: tuple[str, ...] = ()
    qa: QuestionAnswer | None = None
    conversation: tuple[Turn, ...] = ()
    semantic_mask_path: Path | None = None
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))
        object.__setattr__(self, "image_path", Path(self.image_path))
        required = _REQUIRED.get(self.task)
        if required is not None and not getattr(self, required):
            raise ValueError(f"a {self.task.value} sample needs `{required}` (image {self.image_id})")
        if self.task is Task.GROUNDING and len(self.objects) != 1:
            raise ValueError(f"a grounding sample names exactly one object, got {len(self.objects)}")
