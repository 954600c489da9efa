"""Training examples from ShapesWorld (or any data read into `Sample`s): a deterministic task mix.

Example i of a stream is a function of (seed, i) alone: the task, the sample, the paraphrased
template, the class set. A resumed run therefore sees exactly the batches it would have seen.

Class sets for detection and segmentation are open: either colour-shape phrases ("red circle") or
shape phrases ("circle"), people always "person", with random absent classes as negatives and
some present classes left out (their objects are then not targets), in random order so that every
class token <ci> is trained.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from visionllm.data.sample import ObjectAnnotation, Sample
from visionllm.data.shapes.language import ObjectFacts, parse_phrase
from visionllm.data.sources import SampleSource, as_source
from visionllm.formats.task_table import TASK_TABLE, build_instruction, tasks_of_version
from visionllm.formats.tasks import Task
from visionllm.formats.tokens import IMAGE
from visionllm.models.v1.batch import Example
from visionllm.models.v1.processor import VisionLLMProcessor
from visionllm.ops.polygons import resample_polygon
from visionllm.train.mix import MixConfig, class_phrase, draw_class_set, majority_answer

V1_TASKS = tuple(tasks_of_version(1))


class TaskMixture(torch.utils.data.Dataset):
    """Examples of a weighted task mix over one ShapesWorld split.

    Args:
        root: the ShapesWorld folder, or a `SampleSource` (a user's annotation files, `data.sources`).
        split: "train" or "val" (of a ShapesWorld folder).
        processor: the model's processor (images, codec sizes).
        mix: task weights and class-set settings.
        seed: the stream's seed.
        length: the number of examples the dataset reports (indices beyond wrap around the same stream).
        batch_size: examples per batch (with `mix.task_per_batch`, examples i // batch_size share their task).
        default_classes: the model's own class set; text-task examples (caption, VQA) train the tokenizer to find
            every object as the first of these phrases that names it.
    """

    def __init__(
        self,
        root: str | Path | SampleSource,
        split: str,
        processor: VisionLLMProcessor,
        mix: MixConfig,
        seed: int = 0,
        length: int = 10**9,
        batch_size: int = 1,
        default_classes: Sequence[str] = (),
    ) -> None:
        self.processor = processor
        self.batch_size = batch_size
        self.default_phrases = [parse_phrase(p) for p in default_classes]
        self.mix = mix
        self.seed = seed
        self.length = length
        unknown = sorted(set(mix.tasks) - {t.value for t in V1_TASKS})
        if unknown:
            raise ValueError(
                f"unknown or non-v1 task(s) in the mix: {unknown}; v1 tasks: {[t.value for t in V1_TASKS]}"
            )
        self.tasks = [Task(name) for name, weight in mix.tasks.items() if weight > 0]
        self.weights = [mix.tasks[t.value] for t in self.tasks]
        source = as_source(root, split)
        self.categories = source.vocabulary
        self.samples: dict[Task, list[Sample]] = {}
        needed = set(self.tasks) | {Task.DETECTION}
        for task in needed:
            loaded = source.samples(task)
            if task is Task.DETECTION or task is Task.INSTANCE_SEGMENTATION:
                loaded = [s for s in loaded if s.objects] or loaded
            self.samples[task] = loaded
        self.objects = {s.image_id: s.objects for s in self.samples[Task.DETECTION]}
        self.questions: dict[object, list[Sample]] = {}
        for s in self.samples.get(Task.VQA, []):
            self.questions.setdefault(s.image_id, []).append(s)
        for task in self.tasks:
            if not self.samples.get(task):
                raise ValueError(f"{source.name} has no {task.value} samples")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Example:
        rng = random.Random(self.seed * 1_000_003 + index)
        if self.mix.task_per_batch:
            batch_rng = random.Random(f"batch:{self.seed}:{index // self.batch_size}")
            task = batch_rng.choices(self.tasks, self.weights)[0]
            points = batch_rng.choice(self.mix.polygon_points)
        else:
            task = rng.choices(self.tasks, self.weights)[0]
            points = rng.choice(self.mix.polygon_points)
        sample = rng.choice(self.samples[task])
        return self.example(task, sample, rng, points)

    def _more_questions(self, sample: Sample, template: int, rng: random.Random) -> tuple[tuple[str, str], ...]:
        """Other questions on the sample's image, as (instruction, answer) in the same template, when the template
        shows the image before the question (so that the questions can share it)."""
        chosen = TASK_TABLE[Task.VQA].templates[template]
        if self.mix.questions_per_image <= 1 or chosen.index(IMAGE) > chosen.index("{question}"):
            return ()
        others = [s for s in self.questions.get(sample.image_id, []) if s is not sample]
        picked = rng.sample(others, min(len(others), self.mix.questions_per_image - 1))
        return tuple(
            (build_instruction(Task.VQA, question=s.qa.question, template=template).text, majority_answer(s.qa.answers))
            for s in picked
        )

    def _default_class_index(self, objects: Sequence[ObjectAnnotation]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (T, 4) of the objects some default class names and that class's index (T,)."""
        boxes, index = [], []
        for obj in objects:
            attributes = obj.attributes or {}
            facts = ObjectFacts(obj.category, attributes.get("color", ""), attributes.get("size", ""), obj.box_xyxy_px)
            found = next((c for c, p in enumerate(self.default_phrases) if p is not None and p.matches(facts)), None)
            if found is not None:
                boxes.append(obj.box_xyxy_px)
                index.append(found)
        return np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(index, dtype=np.int64)

    def example(self, task: Task, sample: Sample, rng: random.Random, points: int = 16) -> Example:
        """The training example of a task for one sample (`points`: boundary points of a segmentation answer)."""
        image = self.processor.image(sample.image_path)
        codec = self.processor.codec
        everything = self.objects.get(sample.image_id, sample.objects)
        all_boxes = np.array([o.box_xyxy_px for o in everything]).reshape(-1, 4)
        if task in (Task.CAPTION, Task.VQA):
            branches: tuple[tuple[str, str], ...] = ()
            if task is Task.CAPTION:
                instruction = build_instruction(task, template=rng)
                answer = rng.choice(sample.captions)
            else:
                template = rng.randrange(len(TASK_TABLE[task].templates))
                instruction = build_instruction(task, question=sample.qa.question, template=template)
                answer = majority_answer(sample.qa.answers)
                branches = self._more_questions(sample, template, rng)
            token_classes = np.zeros(len(all_boxes), dtype=np.int64)
            if self.default_phrases:
                all_boxes, token_classes = self._default_class_index(everything)
            return Example(
                image,
                instruction.text,
                task,
                instruction.output_format,
                answer=answer,
                token_boxes_xyxy_px=all_boxes,
                token_class_index=token_classes,
                branches=branches,
            )
        if task is Task.GROUNDING:
            instruction = build_instruction(task, expression=rng.choice(sample.expressions), template=rng, config=codec)
            obj = sample.objects[0]
            corners = np.array([obj.box_xyxy_px], dtype=np.float64).reshape(1, 2, 2)
            return Example(
                image, instruction.text, task, instruction.output_format, instruction.class_names,
                class_index=np.zeros(1, dtype=np.int64), points_xy_px=corners, visible=np.ones((1, 2), bool),
                token_boxes_xyxy_px=corners.reshape(1, 4),
            )  # fmt: skip
        if task is Task.KEYPOINTS:
            people = [o for o in sample.objects if o.keypoints_xyv is not None]
            instruction = build_instruction(task, template=rng, config=codec)
            joints = np.stack([o.keypoints_xyv[:, :2] for o in people]) if people else np.zeros((0, 17, 2))
            visible = np.stack([o.keypoints_xyv[:, 2] > 0 for o in people]) if people else np.zeros((0, 17), bool)
            boxes = np.array([o.box_xyxy_px for o in people]).reshape(-1, 4)
            return Example(
                image, instruction.text, task, instruction.output_format, instruction.class_names,
                class_index=np.zeros(len(people), dtype=np.int64), points_xy_px=joints, visible=visible,
                token_boxes_xyxy_px=boxes,
            )  # fmt: skip
        return self._open_set_example(task, sample, image, rng, points)

    def _open_set_example(self, task: Task, sample: Sample, image, rng: random.Random, points: int) -> Example:
        classes, level = draw_class_set(sample.objects, self.mix, rng, self.categories)
        index = {name: i for i, name in enumerate(classes)}
        targets = [o for o in sample.objects if class_phrase(o, level) in index]
        if task is Task.INSTANCE_SEGMENTATION:
            instruction = build_instruction(
                task, classes=classes, num_points=points, template=rng, config=self.processor.codec
            )
            outlines = [resample_polygon(max(o.polygons_xy_px, key=len), points) for o in targets]
        else:
            instruction = build_instruction(task, classes=classes, template=rng, config=self.processor.codec)
            outlines = [np.array(o.box_xyxy_px).reshape(2, 2) for o in targets]
        n = instruction.output_format.num_points
        return Example(
            image, instruction.text, task, instruction.output_format, instruction.class_names,
            class_index=np.array([index[class_phrase(o, level)] for o in targets], dtype=np.int64),
            points_xy_px=np.array(outlines, dtype=np.float64).reshape(len(targets), n, 2),
            visible=np.ones((len(targets), n), bool),
            token_boxes_xyxy_px=np.array([o.box_xyxy_px for o in targets]).reshape(-1, 4),
        )  # fmt: skip
