"""How v2 answers a task request: the plan (the request's words and, for perception, its routed answer) and the
decoders' outputs turned into typed results.

A perception request fixes its answer's layout: detection of "red circle, star" is answered "red circle [DET], star
[DET]", one routed group per asked class, as training taught. `predict` therefore gives that answer and reads the
query states in one pass (as v1 gives its format tokens); `chat` generates whatever the LLM writes and decodes the
routes it chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from visionllm.formats.keypoints import COCO_KEYPOINT_NAMES
from visionllm.formats.results import Detections, SegmentationMap
from visionllm.formats.task_table import Instruction, build_request
from visionllm.formats.tasks import Task
from visionllm.models.v2.heads import upsample_masks
from visionllm.models.v2.object_decoder import Detected, ObjectOutput

ROUTE = {
    Task.DETECTION: "[DET]",
    Task.INSTANCE_SEGMENTATION: "[SEG]",
    Task.SEMANTIC_SEGMENTATION: "[SEG]",
    Task.INTERACTIVE_SEGMENTATION: "[SEG]",
    Task.GROUNDING: "[GRD]",
    Task.KEYPOINTS: "[POSE]",
    Task.GENERATION: "[GEN]",
    Task.EDITING: "[EDIT]",
}
"""The routing token each perception, generation or editing task answers with."""


def detection_answer(classes: Sequence[str], route: str) -> str:
    """One routed group per class: "red circle [DET], star [DET]"."""
    return ", ".join(f"{name} {route}" for name in classes)


def image_answer(prompt: str, route: str) -> str:
    """A generation or editing request's answer: its description or edit, then the route ("a red circle [GEN]"),
    as a detection answer names its class before [DET]: the queries read the words right before them."""
    return f"{prompt.strip().rstrip('.')} {route}"


def keypoint_answer(category: str, names: Sequence[str]) -> str:
    """The object class routed to the object decoder, then each point name to the keypoint decoder."""
    return f"{category} [DET] " + ", ".join(f"{name.replace('_', ' ')} [POSE]" for name in names)


@dataclass(frozen=True)
class Plan:
    """How one request is answered.

    Attributes:
        task: the task.
        request: the user turn.
        answer: the routed answer a perception request fixes; None: the reply is generated.
        class_names: the routed groups' names, in answer order (perception).
        keypoint_names: the point names of a keypoint request.
        prompt: what an image request asks for (its description or edit).
    """

    task: Task
    request: str
    answer: str | None = None
    class_names: tuple[str, ...] = ()
    keypoint_names: tuple[str, ...] = ()
    prompt: str = ""


def plan(instruction: str | Instruction, keypoint_names: Sequence[str] = COCO_KEYPOINT_NAMES) -> Plan:
    """The plan of an instruction: free text is a chat turn (the image placed first when it does not say where);
    an `Instruction` is answered as its task, in v2's request words (a keypoint request with the point names it
    carries, else `keypoint_names`)."""
    if isinstance(instruction, str):
        return Plan(Task.CHAT, instruction if "<image>" in instruction else f"<image> {instruction}")
    task, names = instruction.task, instruction.class_names
    if task in (Task.DETECTION, Task.INSTANCE_SEGMENTATION, Task.SEMANTIC_SEGMENTATION):
        return Plan(task, build_request(task, classes=names), detection_answer(names, ROUTE[task]), names)
    if task is Task.GROUNDING:
        expression = names[0]
        return Plan(task, build_request(task, expression=expression), f"{expression} {ROUTE[task]}", names)
    if task is Task.KEYPOINTS:
        keypoint_names = instruction.keypoint_names or keypoint_names  # the request's own skeleton first
        count = instruction.output_format.num_points if instruction.output_format else len(keypoint_names)
        if count != len(keypoint_names):
            raise ValueError(f"the keypoint request asks for {count} points but {len(keypoint_names)} names are given")
        category = names[0] if names else "person"
        request = build_request(task, classes=[category], keypoint_names=keypoint_names)
        return Plan(task, request, keypoint_answer(category, keypoint_names), (category,), tuple(keypoint_names))
    if task is Task.INTERACTIVE_SEGMENTATION:
        return Plan(task, instruction.text, ROUTE[task], ("object",))
    if task in (Task.GENERATION, Task.EDITING):
        answer = image_answer(instruction.prompt, ROUTE[task])
        return Plan(task, instruction.text, answer, prompt=instruction.prompt)
    return Plan(task, instruction.text)


def detections(found: Detected, names: Sequence[str]) -> Detections:
    """An object decoder's detections of one image as typed results (class names from the routed groups; masks
    where the decoder gave them)."""
    return Detections(
        boxes_xyxy_px=found.boxes.double().cpu().numpy(),
        scores=found.scores.double().cpu().numpy(),
        class_names=tuple(names[c] for c in found.categories.tolist()),
        masks=found.masks.cpu().numpy() if found.masks is not None else None,
    )


PROMPT_COVER = 0.5
"""An interactive segmentation's candidate must cover this share of its prompt's pixels."""


def prompted(found: Detected, marked: np.ndarray) -> Detected:
    """The object a visual prompt marks among the decoder's candidates (with masks at the image's size): the most
    confident of those whose mask covers at least `PROMPT_COVER` of the prompt's pixels (a click's disc, a box, a
    scribble, a mask), else the most confident of all. The LLM's query states say what the prompt marks; the prompt
    itself says where, as a promptable segmenter's mask decoder reads its prompt's position."""
    if len(found.scores) == 0:
        return found
    assert found.masks is not None
    wanted = torch.as_tensor(np.array(marked, dtype=bool), device=found.masks.device)
    cover = (found.masks & wanted).flatten(1).sum(1) / max(1, int(wanted.sum()))
    scores = torch.where(cover >= PROMPT_COVER, found.scores, found.scores - 2.0)  # covering ones first
    return found.select(scores.argmax().view(1))


SEMANTIC_MIN_PROB = 0.2
"""A query takes part in the semantic map when its class probability reaches this (chosen on the first 100 val
images of ShapesWorld among 0.1 / 0.2 / 0.3: mIoU 0.55 / 0.54 / 0.52, against 0.24 for the product rule)."""


def semantic_map(output: ObjectOutput, image: int, size_wh: tuple[int, int], names: Sequence[str]) -> SegmentationMap:
    """The instance outputs merged into one map: each pixel takes the class of the most confident query (class
    probability x mask probability) among the queries whose class probability reaches `SEMANTIC_MIN_PROB`, when
    one of that class's queries covers it (mask probability >= 0.5); background elsewhere."""
    width, height = size_wh
    probs = output.class_logits[image].float().sigmoid() * output.valid[image][None, :]  # (Q, C)
    masks = upsample_masks(output.mask_logits[image].float(), (height, width)).sigmoid()  # (Q, H, W)
    confident = (probs >= SEMANTIC_MIN_PROB).float()
    scores = torch.stack([((probs[:, c] * confident[:, c])[:, None, None] * masks).amax(0) for c in range(len(names))])
    cover = torch.stack([(confident[:, c, None, None] * masks).amax(0) for c in range(len(names))])  # (C, H, W)
    best, label = scores.max(0)
    covered = cover.gather(0, label[None])[0] >= 0.5
    labels = torch.where(covered & (best > 0), label + 1, torch.zeros_like(label))
    return SegmentationMap(labels.cpu().numpy().astype(np.int64), tuple(names))


def keypoint_detections(
    found: Detected, points: Tensor, size_wh: tuple[int, int], category: str, count: int
) -> Detections:
    """Instances with their keypoints ((M, K, 2) in [0, 1] of the image) in pixels, every point marked visible."""
    width, height = size_wh
    xy = points[:, :count].float().cpu() * torch.tensor([width, height], dtype=torch.float32)
    xyv = torch.cat([xy, torch.full((*xy.shape[:2], 1), 2.0)], -1)
    return Detections(
        boxes_xyxy_px=found.boxes.double().cpu().numpy(),
        scores=found.scores.double().cpu().numpy(),
        class_names=(category,) * len(found.scores),
        keypoints_xyv_px=xyv.double().numpy(),
    )
