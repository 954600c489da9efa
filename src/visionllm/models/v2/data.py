"""v2's training conversations from ShapesWorld (or any data read into `Sample`s): a deterministic task mix.

Example i of a stream is a function of (seed, i) alone, as for v1. Every task is a conversation about one image:

- chat: a LLaVA conversation as it is; vqa: several of the image's questions as turns; caption: one caption;
- region_caption: a visual prompt (point, box, scribble or mask, drawn from the object's mask) and the object's
  description, or a question about its colour or shape;
- interactive_segmentation: a visual prompt answered "[SEG]", the object's box and mask its target;
- detection / instance_segmentation: an open class set answered "red circle [DET], star [DET]" ([SEG] for masks),
  one routed group per class, absent classes included (their group has no objects);
- semantic_segmentation: the categories present and some absent, each a [SEG] group whose targets are all its
  objects (the model's semantic map merges them);
- grounding: an expression answered "<expression> [GRD]", the referred object the target;
- keypoints: "person [DET] nose [POSE], left eye [POSE], ..." over a random subset of the skeleton's points (any
  skeleton is its names: people's 17 points, and stars' 5 tips where the dataset has them), the objects and their
  points the targets;
- generation: a drawing's prompt in a request that shows no image, answered "<the prompt> [GEN]", the drawing the
  target;
- editing: a drawing and its edit instruction, answered "<the instruction> [EDIT]", the edited drawing the target.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from visionllm.data.sample import ObjectAnnotation, Sample
from visionllm.data.shapes.drawings import Drawing
from visionllm.data.shapes.language import ObjectFacts, region_description
from visionllm.data.shapes.scene import SHAPES
from visionllm.data.sources import SampleSource, as_source
from visionllm.formats.keypoints import COCO_KEYPOINT_NAMES, STAR_KEYPOINT_NAMES
from visionllm.formats.task_table import build_request
from visionllm.formats.tasks import Task
from visionllm.models.v2.chat import Turn
from visionllm.models.v2.model import ChatExample, Targets, VisionLLMv2Processor
from visionllm.models.v2.object_decoder import ObjectTargets
from visionllm.models.v2.patch_labels import patch_targets
from visionllm.models.v2.perception import ROUTE, detection_answer, image_answer, keypoint_answer
from visionllm.models.v2.regions import RegionPrompt
from visionllm.ops.polygons import polygons_to_mask, rle_to_mask
from visionllm.train.mix import MixConfig, class_phrase, draw_class_set, majority_answer

V2_TRAINING_TASKS = (
    Task.CHAT,
    Task.VQA,
    Task.CAPTION,
    Task.REGION_CAPTION,
    Task.INTERACTIVE_SEGMENTATION,
    Task.DETECTION,
    Task.INSTANCE_SEGMENTATION,
    Task.SEMANTIC_SEGMENTATION,
    Task.GROUNDING,
    Task.KEYPOINTS,
    Task.GENERATION,
    Task.EDITING,
)
"""The tasks a v2 stream trains (ShapesWorld has data for each)."""

IMAGE_TASKS = (Task.GENERATION, Task.EDITING)
"""The tasks whose samples are ShapesWorld's drawings (`drawings`)."""

SEMANTIC_CLASSES = (*SHAPES, "person")
REGION = "region1 <region>"
_LOADED_AS = {Task.REGION_CAPTION: Task.DETECTION, Task.INTERACTIVE_SEGMENTATION: Task.DETECTION}
_LOADED_AS |= {Task.INSTANCE_SEGMENTATION: Task.DETECTION, Task.SEMANTIC_SEGMENTATION: Task.DETECTION}


def object_mask(obj: ObjectAnnotation, size_wh: tuple[int, int]) -> np.ndarray:
    """An annotation's mask (H, W) from its RLE or polygons (its box where it has neither)."""
    width, height = size_wh
    if obj.rle is not None:
        return rle_to_mask(dict(obj.rle)).astype(bool)
    if obj.polygons_xy_px:
        return polygons_to_mask(obj.polygons_xy_px, height, width).astype(bool)
    mask = np.zeros((height, width), bool)
    x1, y1, x2, y2 = (round(v) for v in obj.box_xyxy_px)
    mask[y1:y2, x1:x2] = True
    return mask


def object_targets(
    objects: Sequence[ObjectAnnotation], classes: Sequence[int], size_wh: tuple[int, int], masks: bool = True
) -> ObjectTargets:
    """Boxes (cx, cy, w, h in [0, 1]), class indices and masks of objects."""
    width, height = size_wh
    boxes = torch.tensor(
        [
            [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
            for x1, y1, x2, y2 in (o.box_xyxy_px for o in objects)
        ],
        dtype=torch.float32,
    ).reshape(-1, 4)
    found = torch.from_numpy(np.stack([object_mask(o, size_wh) for o in objects])) if masks and objects else None
    return ObjectTargets(boxes, torch.tensor(list(classes), dtype=torch.long), found)


def region_prompt(mask: np.ndarray, kind: str, rng: random.Random) -> RegionPrompt:
    """A visual prompt of `kind` drawn from an object's mask: a point or a scribble inside it, its box, or it."""
    rows, cols = np.nonzero(mask)
    if kind == "point":
        k = rng.randrange(len(rows))
        return RegionPrompt("point", [cols[k] + 0.5, rows[k] + 0.5])
    if kind == "box":
        return RegionPrompt("box", [float(cols.min()), float(rows.min()), cols.max() + 1.0, rows.max() + 1.0])
    if kind == "scribble":
        picks = sorted(rng.sample(range(len(rows)), min(4, len(rows))), key=lambda k: (cols[k], rows[k]))
        return RegionPrompt("scribble", [[cols[k] + 0.5, rows[k] + 0.5] for k in picks])
    return RegionPrompt("mask", mask)


def facts(obj: ObjectAnnotation) -> ObjectFacts:
    attributes = obj.attributes or {}
    return ObjectFacts(obj.category, attributes.get("color", ""), attributes.get("size", ""), obj.box_xyxy_px)


class ChatMixture(torch.utils.data.Dataset):
    """v2 training conversations of a weighted task mix over one ShapesWorld split.

    Args:
        root: the ShapesWorld folder, or a `SampleSource` (a user's annotation files, `data.sources`).
        split: "train" or "val" (of a ShapesWorld folder).
        processor: the model's processor.
        mix: task weights (`V2_TRAINING_TASKS`) and class-set settings.
        seed: the stream's seed.
        length: the number of examples the dataset reports.
        batch_size: examples per batch (with `mix.task_per_batch`, examples i // batch_size share their task).
    """

    def __init__(
        self,
        root: str | Path | SampleSource,
        split: str,
        processor: VisionLLMv2Processor,
        mix: MixConfig,
        seed: int = 0,
        length: int = 10**9,
        batch_size: int = 1,
    ) -> None:
        self.processor = processor
        self.mix = mix
        self.seed = seed
        self.length = length
        self.batch_size = batch_size
        names = {t.value for t in V2_TRAINING_TASKS}
        unknown = sorted(set(mix.tasks) - names)
        if unknown:
            raise ValueError(f"unknown or non-v2 task(s) in the mix: {unknown}; v2 trains {sorted(names)}")
        self.tasks = [Task(name) for name, weight in mix.tasks.items() if weight > 0]
        self.weights = [mix.tasks[t.value] for t in self.tasks]
        self.samples: dict[Task, list[Sample]] = {}
        read: dict[Task, list[Sample]] = {}  # each annotation file once (four tasks read the instances)

        source = as_source(root, split)
        self.categories = source.vocabulary

        def loaded_as(kind: Task) -> list[Sample]:
            if kind not in read:
                read[kind] = source.samples(kind)
            return read[kind]

        for task in self.tasks:
            if task in IMAGE_TASKS:
                decoder = processor.config.generation if task is Task.GENERATION else processor.config.editing
                if decoder is None:
                    raise ValueError(f"the mix trains {task.value} but the model has no {task.value} decoder")
                self.samples[task] = source.drawings()
                continue
            loaded = loaded_as(_LOADED_AS.get(task, task))
            if task is Task.KEYPOINTS:  # people and, where the dataset has them, stars: two skeletons
                loaded = loaded + source.star_keypoints()
            if _LOADED_AS.get(task, task) is Task.DETECTION:
                loaded = [s for s in loaded if s.objects]
            if not loaded:
                raise ValueError(f"{source.name} has no {task.value} samples")
            self.samples[task] = loaded
        self.scenes: dict[str, list[ObjectAnnotation]] | None = None
        if processor.config.patch_labels is not None and set(self.tasks) - set(IMAGE_TASKS):
            # every image's objects, for the patch labels of the other tasks (the image tasks have none)
            self.scenes = {str(s.image_path): s.objects for s in loaded_as(Task.DETECTION)}
        self.questions: dict[object, list[Sample]] = {}
        for s in self.samples.get(Task.VQA, []):
            self.questions.setdefault(s.image_id, []).append(s)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> ChatExample:
        rng = random.Random(self.seed * 1_000_003 + index)
        if self.mix.task_per_batch:
            task = random.Random(f"batch:{self.seed}:{index // self.batch_size}").choices(self.tasks, self.weights)[0]
        else:
            task = rng.choices(self.tasks, self.weights)[0]
        sample = rng.choice(self.samples[task])
        example = self.example(task, sample, rng)
        if self.scenes is not None and task not in IMAGE_TASKS:
            example.patches = self.patches(sample, example.image.size_wh)
        return example

    def patches(self, sample: Sample, size_wh: tuple[int, int]) -> torch.Tensor:
        """The patch labels of a sample's image (`patch_labels`); an image without annotated objects is background."""
        assert self.scenes is not None
        objects = self.scenes.get(str(sample.image_path), [])
        config, grid = self.processor.config.patch_labels, self.processor.config.vision.grid
        return patch_targets(config, [(o, object_mask(o, size_wh)) for o in objects], size_wh, grid)

    def example(self, task: Task, sample: Sample | Drawing, rng: random.Random) -> ChatExample:
        """The training conversation of a task for one sample."""
        if task in IMAGE_TASKS:
            return self.drawing(task, sample, rng)
        image = self.processor.image(sample.image_path)
        size = image.size_wh

        def asked(request: str, answer: str, targets: Targets | None = None, regions=()) -> ChatExample:
            turns = (Turn("user", request), Turn("assistant", answer))
            return ChatExample(image, turns, tuple(regions), targets)

        if task is Task.CHAT:
            turns = tuple(Turn("user" if t.role == "user" else "assistant", t.text) for t in sample.conversation)
            return ChatExample(image, turns)
        if task is Task.CAPTION:
            return asked(build_request(task, template=rng), rng.choice(sample.captions))
        if task is Task.VQA:
            others = [s for s in self.questions.get(sample.image_id, []) if s is not sample]
            picked = [sample, *rng.sample(others, min(len(others), self.mix.questions_per_image - 1))]
            turns: list[Turn] = []
            for k, s in enumerate(picked):
                question = build_request(task, question=s.qa.question, template=rng) if k == 0 else s.qa.question
                turns += [Turn("user", question), Turn("assistant", majority_answer(s.qa.answers))]
            return ChatExample(image, tuple(turns))
        if task is Task.GROUNDING:
            expression = rng.choice(sample.expressions)
            request = build_request(task, expression=expression, template=rng)
            return asked(request, f"{expression} {ROUTE[task]}", Targets(object_targets(sample.objects[:1], [0], size)))
        if task is Task.KEYPOINTS:
            annotated = [o for o in sample.objects if o.keypoints_xyv is not None]
            category = annotated[0].category
            skeleton = STAR_KEYPOINT_NAMES if category == "star" else COCO_KEYPOINT_NAMES
            count = len(skeleton)
            every = rng.random() < 0.5
            chosen = list(range(count)) if every else sorted(rng.sample(range(count), rng.randint(1, count)))
            names = [skeleton[k] for k in chosen]
            points = torch.tensor(np.stack([o.keypoints_xyv[chosen] for o in annotated]), dtype=torch.float32)
            points[..., 0] /= size[0]
            points[..., 1] /= size[1]
            request = build_request(task, classes=[category], keypoint_names=names, template=rng)
            targets = Targets(object_targets(annotated, [0] * len(annotated), size, masks=False), points)
            return asked(request, keypoint_answer(category, names), targets)
        if task in (Task.REGION_CAPTION, Task.INTERACTIVE_SEGMENTATION):
            obj = rng.choice(sample.objects)
            mask = object_mask(obj, size)
            if not mask.any():  # an object hidden by others: its box marks it
                mask = object_mask(ObjectAnnotation(obj.box_xyxy_px, obj.category), size)
            weights = (4, 2, 2, 2) if task is Task.INTERACTIVE_SEGMENTATION else (1, 1, 1, 1)
            kind = rng.choices(("point", "box", "scribble", "mask"), weights)[0]
            prompt = region_prompt(mask, kind, rng)
            if task is Task.INTERACTIVE_SEGMENTATION:
                request = build_request(task, regions=REGION, template=rng)
                return asked(request, ROUTE[task], Targets(object_targets([obj], [0], size)), [prompt])
            described = facts(obj)
            if rng.random() < 0.5:
                request = build_request(task, regions=REGION, template=rng)
                return asked(request, region_description(described), regions=[prompt])
            shape = obj.category != "person" and rng.random() < 0.5
            question = f"{REGION} What {'shape' if shape else 'color'} is this?"
            return asked(f"<image> {question}", described.category if shape else described.color, regions=[prompt])
        if task is Task.SEMANTIC_SEGMENTATION:
            present = sorted({o.category for o in sample.objects})
            absent = [c for c in self.categories or SEMANTIC_CLASSES if c not in present]
            classes = present + rng.sample(absent, rng.randint(0, len(absent)))
            rng.shuffle(classes)
            index = {name: i for i, name in enumerate(classes)}
            request = build_request(task, classes=classes, template=rng)
            targets = object_targets(sample.objects, [index[o.category] for o in sample.objects], size)
            return asked(request, detection_answer(classes, ROUTE[task]), Targets(targets))
        # detection and instance segmentation, over an open class set
        classes, level = draw_class_set(sample.objects, self.mix, rng, self.categories)
        index = {name: i for i, name in enumerate(classes)}
        chosen = [o for o in sample.objects if class_phrase(o, level) in index]
        targets = object_targets(chosen, [index[class_phrase(o, level)] for o in chosen], size)
        request = build_request(task, classes=classes, template=rng)
        return asked(request, detection_answer(classes, ROUTE[task]), Targets(targets))

    def drawing(self, task: Task, drawing: Drawing, rng: random.Random) -> ChatExample:
        """A text-to-image request (no image shown) or an edit of a drawing, its target image at the decoder's
        size."""
        p = self.processor
        config = p.config.generation if task is Task.GENERATION else p.config.editing
        assert config is not None
        if task is Task.GENERATION:
            target = p.decoder_pixels(p.image(drawing.image_path).pixels[None], config.image_size)[0]
            request = build_request(task, description=drawing.prompt, template=rng)
            answer = image_answer(drawing.prompt, ROUTE[task])
            return ChatExample(None, (Turn("user", request), Turn("assistant", answer)), (), Targets(image=target))
        target = p.decoder_pixels(p.image(drawing.edit.image_path).pixels[None], config.image_size)[0]
        request = build_request(task, edit=drawing.edit.instruction, template=rng)
        turns = (Turn("user", request), Turn("assistant", image_answer(drawing.edit.instruction, ROUTE[task])))
        return ChatExample(p.image(drawing.image_path), turns, (), Targets(image=target))
