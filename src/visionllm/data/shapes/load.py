"""Read a ShapesWorld split back as samples of one task, through the public-format readers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from visionllm.data import readers
from visionllm.data.sample import Sample
from visionllm.data.shapes.dataset import ShapesWorldLayout, image_file_name
from visionllm.formats.tasks import Task

TASKS_ON_DISK = (
    Task.DETECTION,
    Task.INSTANCE_SEGMENTATION,
    Task.KEYPOINTS,
    Task.CAPTION,
    Task.GROUNDING,
    Task.VQA,
    Task.CHAT,
    Task.SEMANTIC_SEGMENTATION,
)


def load_split(root: str | Path, split: str, task: Task | str) -> list[Sample]:
    """Samples of `task` from split `split` of the ShapesWorld dataset at `root`.

    Detection and instance segmentation share the COCO instances file; keypoint samples keep only
    images with at least one person.
    """
    layout = ShapesWorldLayout(Path(root))
    task = Task(task)
    images = layout.image_dir(split)
    if task in (Task.DETECTION, Task.INSTANCE_SEGMENTATION):
        samples = readers.read_coco_instances(layout.instances(split), images)
        return [_with_task(s, task) for s in samples]
    if task is Task.KEYPOINTS:
        return [s for s in readers.read_coco_keypoints(layout.keypoints(split), images) if s.objects]
    if task is Task.CAPTION:
        return readers.read_coco_captions(layout.captions(split), images)
    if task is Task.GROUNDING:
        return readers.read_refcoco(layout.refs, layout.ref_instances, layout.ref_image_dir, split=split)
    if task is Task.VQA:
        return readers.read_vqav2(layout.vqa_questions(split), layout.vqa_annotations(split), images, image_file_name)
    if task is Task.CHAT:
        return readers.read_llava(layout.conversations(split), images)
    if task is Task.SEMANTIC_SEGMENTATION:
        return readers.read_semantic_masks(images, layout.semantic_dir(split))
    raise ValueError(
        f"ShapesWorld has no reader for {task.value} yet; tasks on disk with readers: "
        + ", ".join(t.value for t in TASKS_ON_DISK)
    )


def _with_task(sample: Sample, task: Task) -> Sample:
    return sample if sample.task is task else replace(sample, task=task)


def load_star_keypoints(root: str | Path, split: str) -> list[Sample]:
    """The images of a split with stars, each star with its 5 tips as keypoints (`STAR_KEYPOINT_NAMES`); none for a
    dataset written before the stars' keypoints were."""
    layout = ShapesWorldLayout(Path(root))
    if not layout.star_keypoints(split).exists():
        return []
    return [s for s in readers.read_coco_keypoints(layout.star_keypoints(split), layout.image_dir(split)) if s.objects]
