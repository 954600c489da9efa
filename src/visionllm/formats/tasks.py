"""The tasks the system accepts, as data."""

from __future__ import annotations

from enum import Enum


class Task(str, Enum):
    """Every task of the spec (section 3). v1 answers the first six; v2 adds the rest."""

    DETECTION = "detection"
    INSTANCE_SEGMENTATION = "instance_segmentation"
    GROUNDING = "grounding"
    KEYPOINTS = "keypoints"
    CAPTION = "caption"
    VQA = "vqa"
    CHAT = "chat"
    REGION_CAPTION = "region_caption"
    INTERACTIVE_SEGMENTATION = "interactive_segmentation"
    SEMANTIC_SEGMENTATION = "semantic_segmentation"
    GROUNDED_CAPTION = "grounded_caption"
    GENERATION = "generation"
    EDITING = "editing"

    def __str__(self) -> str:
        return self.value
