"""Where training samples come from: a ShapesWorld split, or a user's own annotation files in the public formats.

Both give the task mixtures (`TaskMixture` of v1, `ChatMixture` of v2) the same thing: the samples of a task, and
the class vocabulary that open class sets draw their absent (negative) classes from.

- `ShapesWorldSplit`: a ShapesWorld folder's split; class phrases are colour-shape pairs or shapes.
- `AnnotationSet`: any mix of COCO instances (boxes, polygons), COCO keypoints, COCO captions, RefCOCO, VQAv2
  and LLaVA files (`SourceConfig`); class phrases are the COCO files' category names, so that new categories
  are new phrases of the instruction and no head is resized.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from visionllm.config import ConfigError, build
from visionllm.data import readers
from visionllm.data.sample import Sample
from visionllm.data.shapes.drawings import Drawing, load_drawings
from visionllm.data.shapes.load import load_split, load_star_keypoints
from visionllm.formats.tasks import Task

logger = logging.getLogger(__name__)

KINDS = ("coco_instances", "coco_keypoints", "coco_captions", "refcoco", "vqav2", "llava")
"""The annotation formats an `AnnotationSet` reads."""

_TASKS_OF_KIND = {
    "coco_instances": (Task.DETECTION, Task.INSTANCE_SEGMENTATION),
    "coco_keypoints": (Task.KEYPOINTS,),
    "coco_captions": (Task.CAPTION,),
    "refcoco": (Task.GROUNDING,),
    "vqav2": (Task.VQA,),
    "llava": (Task.CHAT,),
}


@dataclass
class SourceConfig:
    """One annotation file of a user's set.

    Attributes:
        kind: its format, one of `KINDS`.
        json: the annotation file (RefCOCO: the refs file; VQAv2: the questions file).
        images: the folder its image names are relative to.
        instances: RefCOCO: the COCO instances file beside the refs.
        answers: VQAv2: the annotations (answers) file.
        split: RefCOCO: the refs' split to keep (None: all).
        image_pattern: VQAv2: image id -> file name, as a format string with `{image_id}` (default COCO 2014's).
    """

    kind: str
    json: str
    images: str
    instances: str | None = None
    answers: str | None = None
    split: str | None = None
    image_pattern: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"data source kind {self.kind!r}: one of {', '.join(KINDS)}")
        if self.kind == "refcoco" and not self.instances:
            raise ConfigError(f"the refcoco source {self.json} needs `instances` (the COCO instances file beside it)")

    @property
    def tasks(self) -> tuple[Task, ...]:
        return _TASKS_OF_KIND[self.kind]


@dataclass
class DatasetConfig:
    """A user's data set: training and validation sources (`train.dataset` of a preset, or `visionllm finetune`).

    Attributes:
        train: the training sources.
        val: the validation sources (evaluated during and after training).
        skip_bad: leave malformed annotations out (counted and logged) instead of stopping at the first.
    """

    train: list[SourceConfig] = field(default_factory=list)
    val: list[SourceConfig] = field(default_factory=list)
    skip_bad: bool = False

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            built = [
                s if isinstance(s, SourceConfig) else build(SourceConfig, s, f"dataset.{split}[{i}]")
                for i, s in enumerate(getattr(self, split))
            ]
            setattr(self, split, built)
        if not self.train:
            raise ConfigError("train.dataset.train lists no source")


class ShapesWorldSplit:
    """A split of a ShapesWorld folder, read through the public-format readers."""

    vocabulary: list[str] | None = None  # class sets use colour-shape pairs (`draw_class_set`)

    def __init__(self, root: str | Path, split: str) -> None:
        self.root, self.split = Path(root), split
        self.name = f"the {split} split of {self.root}"

    def samples(self, task: Task) -> list[Sample]:
        return load_split(self.root, self.split, task)

    def star_keypoints(self) -> list[Sample]:
        return load_star_keypoints(self.root, self.split)

    def drawings(self) -> list[Drawing]:
        return load_drawings(self.root, self.split)


class AnnotationSet:
    """Samples read from annotation files in the public formats (a user's own data).

    Args:
        sources: the files.
        skip_bad: leave malformed annotations out instead of raising `DatasetFormatError` at the first.
        name: how errors name the set.

    Attributes:
        vocabulary: every category name of the COCO files, in file order: class sets draw absent classes from it.
        skipped: the errors of the annotations left out.
    """

    def __init__(self, sources: list[SourceConfig], skip_bad: bool = False, name: str = "the data set") -> None:
        self.name = name
        self.skipped: list[str] = []
        bad = self.skipped if skip_bad else None
        self.by_task: dict[Task, list[Sample]] = {}
        self.vocabulary: list[str] = []
        for source in sources:
            named: dict[str, int] = {}
            for sample_task, samples in self._read(source, bad, named).items():
                self.by_task.setdefault(sample_task, []).extend(samples)
            self.vocabulary += [name for name in named if name not in self.vocabulary]
        if self.skipped:
            logger.warning(
                "%s: left out %d malformed annotation(s); the first: %s", name, len(self.skipped), self.skipped[0]
            )

    @staticmethod
    def _read(source: SourceConfig, bad: list[str] | None, named: dict[str, int]) -> dict[Task, list[Sample]]:
        """A file's samples by task; `named` gets a COCO file's category ids by name."""
        images = Path(source.images)
        if source.kind == "coco_instances":
            samples = readers.read_coco_instances(source.json, images, bad, named)
            found = {Task.DETECTION: samples}
            if any(o.polygons_xy_px or o.rle for s in samples for o in s.objects):
                found[Task.INSTANCE_SEGMENTATION] = samples
            return found
        if source.kind == "coco_keypoints":
            people = readers.read_coco_keypoints(source.json, images, bad, named)
            return {Task.KEYPOINTS: [s for s in people if s.objects]}
        if source.kind == "coco_captions":
            return {Task.CAPTION: readers.read_coco_captions(source.json, images, bad)}
        if source.kind == "refcoco":
            assert source.instances is not None
            return {Task.GROUNDING: readers.read_refcoco(source.json, source.instances, images, split=source.split)}
        if source.kind == "vqav2":
            pattern = source.image_pattern or readers.COCO2014_IMAGE_NAME
            return {Task.VQA: readers.read_vqav2(source.json, source.answers, images, pattern)}
        return {Task.CHAT: readers.read_llava(source.json, images)}

    def samples(self, task: Task) -> list[Sample]:
        return self.by_task.get(task, [])

    def star_keypoints(self) -> list[Sample]:
        return []

    def drawings(self) -> list[Drawing]:
        return []

    @property
    def tasks(self) -> list[Task]:
        """The tasks the set has samples of."""
        return [t for t, samples in self.by_task.items() if samples]


SampleSource = ShapesWorldSplit | AnnotationSet


def as_source(data: str | Path | SampleSource, split: str) -> SampleSource:
    """A folder is a ShapesWorld dataset; a source is itself."""
    return data if isinstance(data, ShapesWorldSplit | AnnotationSet) else ShapesWorldSplit(data, split)


def guess_kind(path: str | Path) -> str:
    """The format of a COCO-style annotation file, from its content: coco_instances, coco_keypoints,
    coco_captions or llava (VQAv2 and RefCOCO need a second file: name them in a data config).

    Raises:
        DatasetFormatError: a file that is none of these (the message says what was found).
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise readers.DatasetFormatError(f"{path}: not valid JSON ({error})") from None
    if isinstance(data, list):
        return "llava"
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        first = next((a for a in data["annotations"] if isinstance(a, dict)), {})
        if "caption" in first:
            return "coco_captions"
        if "keypoints" in first:
            return "coco_keypoints"
        if "bbox" in first or "categories" in data:
            return "coco_instances"
    raise readers.DatasetFormatError(
        f"{path}: not a COCO instances, keypoints or captions file, nor a LLaVA list; for VQAv2 or RefCOCO, "
        "name the files in a data config (--data)"
    )
