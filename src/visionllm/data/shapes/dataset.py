"""Write a ShapesWorld dataset to disk, in the public datasets' formats.

    root/
      shapesworld.json                          what was generated: config, seed, splits, files
      images/{split}/{image_id:012d}.png
      annotations/instances_{split}.json        COCO instances (category = shape or person;
                                                colour and size as `attributes`)
      annotations/person_keypoints_{split}.json COCO keypoints (17 COCO points, COCO skeleton)
      annotations/star_keypoints_{split}.json   COCO keypoints of the stars (their 5 tips, a ring skeleton)
      annotations/captions_{split}.json         COCO captions (five per image)
      refcoco/refs(unc).p, refcoco/instances.json   RefCOCO layout (all splits, `split` field)
      vqa/v2_OpenEnded_shapes_{split}_questions.json, vqa/v2_shapes_{split}_annotations.json  VQAv2
      llava/conversations_{split}.json          LLaVA multi-turn conversations
      semantic/{split}/{image_id:012d}.png      per-pixel category id (0 = background)
      regions/regions_{split}.json              visual prompts (point, box, scribble, mask) with text
      generation/prompts_{split}.json           text-to-image prompts (the image is the target)
      editing/edits_{split}.json, editing/{split}/{image_id:012d}.png   editing triplets
      drawings/...                              one or two large shapes with a prompt and an edit each
                                                (`drawings`): what the generation and editing decoders learn

Every image is a function of (seed, split, index) alone, so any subset can be regenerated and
the output does not depend on how many images were asked for.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from visionllm.data.shapes import language as lang
from visionllm.data.shapes.drawings import write_drawings
from visionllm.data.shapes.scene import (
    CATEGORIES,
    COLORS,
    KEYPOINT_NAMES,
    PERSON,
    SKELETON,
    RenderedScene,
    Scene,
    SceneObject,
    ShapesWorldConfig,
    render_scene,
    sample_scene_and_silhouettes,
    star_tips,
)
from visionllm.formats.keypoints import STAR_KEYPOINT_NAMES, STAR_SKELETON
from visionllm.ops.polygons import mask_to_polygons, mask_to_rle, polygons_to_mask

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}
_ID_BASE = {"train": 0, "val": 1_000_000}
MAX_IMAGES_PER_SPLIT = 999_999
VERSION = "1.0"


@dataclass(frozen=True)
class ShapesWorldLayout:
    """Where each file of a ShapesWorld dataset lives under `root`."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def card(self) -> Path:
        return self.root / "shapesworld.json"

    def image_dir(self, split: str) -> Path:
        return self.root / "images" / split

    def image(self, split: str, image_id: int) -> Path:
        return self.image_dir(split) / image_file_name(image_id)

    def instances(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def keypoints(self, split: str) -> Path:
        return self.root / "annotations" / f"person_keypoints_{split}.json"

    def star_keypoints(self, split: str) -> Path:
        return self.root / "annotations" / f"star_keypoints_{split}.json"

    def captions(self, split: str) -> Path:
        return self.root / "annotations" / f"captions_{split}.json"

    @property
    def refs(self) -> Path:
        return self.root / "refcoco" / "refs(unc).p"

    @property
    def ref_instances(self) -> Path:
        return self.root / "refcoco" / "instances.json"

    @property
    def ref_image_dir(self) -> Path:
        """RefCOCO's instances.json names images as '{split}/{file}' relative to this folder."""
        return self.root / "images"

    def vqa_questions(self, split: str) -> Path:
        return self.root / "vqa" / f"v2_OpenEnded_shapes_{split}_questions.json"

    def vqa_annotations(self, split: str) -> Path:
        return self.root / "vqa" / f"v2_shapes_{split}_annotations.json"

    def conversations(self, split: str) -> Path:
        return self.root / "llava" / f"conversations_{split}.json"

    def semantic_dir(self, split: str) -> Path:
        return self.root / "semantic" / split

    def regions(self, split: str) -> Path:
        return self.root / "regions" / f"regions_{split}.json"

    def generation(self, split: str) -> Path:
        return self.root / "generation" / f"prompts_{split}.json"

    def edits(self, split: str) -> Path:
        return self.root / "editing" / f"edits_{split}.json"

    def edit_dir(self, split: str) -> Path:
        return self.root / "editing" / split


def star_category() -> dict[str, Any]:
    """The star's COCO category with its keypoints (its tips) and skeleton."""
    star = next(c for c in categories() if c["name"] == "star")
    return {**star, "keypoints": list(STAR_KEYPOINT_NAMES), "skeleton": [list(p) for p in STAR_SKELETON]}


def image_file_name(image_id: int) -> str:
    return f"{image_id:012d}.png"


def categories() -> list[dict[str, Any]]:
    """COCO categories: the five shapes and person (with its keypoints and skeleton)."""
    out: list[dict[str, Any]] = [
        {"supercategory": "shape", "id": i + 1, "name": name} for i, name in enumerate(CATEGORIES)
    ]
    out[-1] = {
        "supercategory": "person",
        "id": len(CATEGORIES),
        "name": PERSON,
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [list(pair) for pair in SKELETON],
    }
    return out


CATEGORY_ID = {name: i + 1 for i, name in enumerate(CATEGORIES)}


# ---------------------------------------------------------------------------------------------
# One image


@dataclass
class ImageRecord:
    """Everything generated for one image, in the public formats' dict layouts."""

    image: dict[str, Any]
    scene: Scene
    rendered: RenderedScene
    objects: list[dict[str, Any]]  # COCO instance annotations
    keypoints: list[dict[str, Any]]  # COCO keypoint annotations (people)
    stars: list[dict[str, Any]]  # COCO keypoint annotations of the stars (their tips)
    facts: list[lang.ObjectFacts]
    captions: list[str]
    refs: list[tuple[int, list[str]]]  # (ann_id, sentences)
    questions: list[lang.Question]
    answers: list[list[str]]
    conversation: list[dict[str, str]]
    regions: list[dict[str, Any]]
    edit: tuple[str, Scene] | None = None
    semantic: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8))


def make_image(seed: int, split: str, index: int, config: ShapesWorldConfig) -> ImageRecord:
    """Sample, render and annotate image `index` of `split` (a pure function of its arguments)."""
    image_id = _ID_BASE[split] + index + 1
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    text_rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 1])
    scene, silhouettes = sample_scene_and_silhouettes(rng, config, train=split == "train")
    rendered = render_scene(scene, silhouettes)
    size = scene.size
    image = {"id": image_id, "file_name": image_file_name(image_id), "width": size, "height": size, "license": 0}
    objects, keypoint_anns, star_anns, facts = [], [], [], []
    semantic = np.zeros((size, size), dtype=np.uint8)
    for k, obj in enumerate(scene.objects):
        visible = rendered.visible[k]
        ann = instance_annotation(image_id, k, obj, visible, CATEGORY_ID[obj.category])
        if ann is None:
            continue
        x1, y1, w, h = ann["bbox"]
        x2, y2 = x1 + w, y1 + h
        objects.append(ann)
        semantic[visible] = CATEGORY_ID[obj.category]
        facts.append(lang.ObjectFacts(obj.category, obj.color, obj.size, (x1, y1, x2, y2)))
        if obj.category == PERSON:
            kp = rendered.keypoints_xyv[k].copy()
            kp[:, :2] = np.round(kp[:, :2], 2)
            keypoint_anns.append(
                {**ann, "keypoints": kp.reshape(-1).tolist(), "num_keypoints": int((kp[:, 2] > 0).sum())}
            )
        if obj.category == "star":
            kp = _tip_keypoints(star_tips(obj), visible)
            star_anns.append({**ann, "keypoints": kp.reshape(-1).tolist(), "num_keypoints": int((kp[:, 2] > 0).sum())})
    background = scene.background.kind
    caps = lang.captions(facts, background, text_rng)
    refs = []
    for k, ann in enumerate(objects):
        sentences = lang.referring_expressions(facts, k, text_rng)
        if sentences:
            refs.append((ann["id"], sentences))
    qs = lang.questions(facts, text_rng)
    answers = [lang.annotator_answers(q.answer, q.answer_type, text_rng) for q in qs]
    record = ImageRecord(
        image=image,
        scene=scene,
        rendered=rendered,
        objects=objects,
        keypoints=keypoint_anns,
        stars=star_anns,
        facts=facts,
        captions=caps,
        refs=refs,
        questions=qs,
        answers=answers,
        conversation=_conversation(caps, qs, refs, objects, size, text_rng),
        regions=[
            _region(ann, rendered.visible[_object_index(ann)], facts[k], text_rng) for k, ann in enumerate(objects)
        ],
        semantic=semantic,
    )
    record.edit = _edit(scene, objects, refs, config, split, text_rng)
    return record


def instance_annotation(
    image_id: int, index: int, obj: SceneObject, visible: np.ndarray, category_id: int
) -> dict[str, Any] | None:
    """The COCO instance annotation of a scene's object `index` from its visible pixels (None: none visible)."""
    polygons = mask_to_polygons(visible)
    if not polygons:
        return None
    size = visible.shape[0]
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    x1, y1, x2, y2 = float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)
    return {
        "id": image_id * 100 + index + 1,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": [p.reshape(-1).tolist() for p in polygons],
        # COCO's area is that of the segmentation; a person's outline also covers gaps between limbs.
        "area": float(polygons_to_mask(polygons, size, size).sum()),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "iscrowd": 0,
        "attributes": {"color": obj.color, "size": obj.size},
    }


def _tip_keypoints(tips: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(5, 3) COCO keypoints of a star's tips: 2 where the tip's pixel (or one next to it) shows the star, 1 where
    it is covered, 0 outside the image."""
    size = visible.shape[0]
    out = np.zeros((len(tips), 3))
    for k, (x, y) in enumerate(tips):
        if not (0 <= x < size and 0 <= y < size):
            continue
        col, row = int(x), int(y)
        near = visible[max(0, row - 1) : row + 2, max(0, col - 1) : col + 2]
        out[k] = [round(float(x), 2), round(float(y), 2), 2 if near.any() else 1]
    return out


def _object_index(ann: dict[str, Any]) -> int:
    return ann["id"] % 100 - 1


def _conversation(
    caps: list[str], qs: list[lang.Question], refs: list[tuple[int, list[str]]], objects: list[dict], size: int, rng
) -> list[dict[str, str]]:
    openers = ["Describe the image.", "What do you see in this picture?", "Give a short description of the image."]
    turns = [
        {"from": "human", "value": "<image>\n" + openers[int(rng.integers(len(openers)))]},
        {"from": "gpt", "value": caps[0][0].upper() + caps[0][1:] + "."},
    ]
    for q in qs[: int(rng.integers(1, 3))]:
        turns += [{"from": "human", "value": q.question}, {"from": "gpt", "value": lang.answer_sentence(q)}]
    if refs:
        ann_id, sentences = refs[int(rng.integers(len(refs)))]
        x, y, w, h = next(a["bbox"] for a in objects if a["id"] == ann_id)
        box = ", ".join(f"{v / size:.3f}" for v in (x, y, x + w, y + h))
        turns += [
            {"from": "human", "value": f"Where is {sentences[0]}? Answer with a bounding box."},
            {"from": "gpt", "value": f"[{box}]"},
        ]
    return turns


def _region(ann: dict[str, Any], visible: np.ndarray, facts: lang.ObjectFacts, rng: np.random.Generator) -> dict:
    kind = ("point", "box", "scribble", "mask")[int(rng.integers(4))]
    rows, cols = np.nonzero(visible)
    if kind == "point":
        k = int(rng.integers(len(rows)))
        prompt: dict[str, Any] = {"type": "point", "point_xy_px": [cols[k] + 0.5, rows[k] + 0.5]}
    elif kind == "box":
        x, y, w, h = ann["bbox"]
        prompt = {"type": "box", "box_xyxy_px": [x, y, x + w, y + h]}
    elif kind == "scribble":
        picks = rng.choice(len(rows), size=min(4, len(rows)), replace=False)
        points = sorted(((float(cols[k]) + 0.5, float(rows[k]) + 0.5) for k in picks), key=lambda p: (p[0], p[1]))
        prompt = {"type": "scribble", "points_xy_px": [list(p) for p in points]}
    else:
        prompt = {"type": "mask", "segmentation": mask_to_rle(visible)}
    if facts.category != PERSON and rng.random() < 0.5:
        question, answer = "What shape is this?", facts.category
    else:
        question, answer = "What color is this?", facts.color
    return {
        "id": ann["id"],
        "image_id": ann["image_id"],
        "ann_id": ann["id"],
        "prompt": prompt,
        "caption": lang.region_description(facts),
        "question": question,
        "answer": answer,
    }


def _edit(
    scene: Scene, objects: list[dict], refs: list[tuple[int, list[str]]], config: ShapesWorldConfig, split: str, rng
) -> tuple[str, Scene] | None:
    """An editing request with its target scene: recolour or remove a uniquely named object."""
    named = [(ann_id, s) for ann_id, sentences in refs for s in sentences if " of " not in s and "from" not in s]
    if not named:
        return None
    ann_id, expression = named[int(rng.integers(len(named)))]
    index = ann_id % 100 - 1
    obj = scene.objects[index]
    if rng.random() < 0.5:
        return f"remove {expression}", scene.without(index)
    colors = [
        c for c in COLORS if c != obj.color and not (split == "train" and (c, obj.category) in config.holdout_pairs)
    ]
    color = colors[int(rng.integers(len(colors)))]
    return f"make {expression} {color}", scene.recolored(index, color)


# ---------------------------------------------------------------------------------------------
# A whole dataset


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as f:
        f.write(json.dumps(data, separators=(",", ":")))  # dumps uses the C encoder; dump does not
        tmp = f.name
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, compress_level=1)


def iter_split(seed: int, split: str, count: int, config: ShapesWorldConfig) -> Iterator[ImageRecord]:
    for index in range(count):
        yield make_image(seed, split, index, config)


def generate_shapesworld(
    out: str | Path,
    train: int,
    val: int,
    config: ShapesWorldConfig = ShapesWorldConfig(),
    seed: int = 0,
    progress: bool = True,
) -> ShapesWorldLayout:
    """Generate a ShapesWorld dataset under `out` (see the module docstring for the layout).

    Args:
        out: the dataset folder (created; existing ShapesWorld files in it are replaced).
        train, val: images per split.
        config: how scenes are sampled (image size, objects per image, held-out pairs).
        seed: the dataset seed; the same seed and config give the same files.
        progress: show a progress bar.
    """
    for name, count in (("train", train), ("val", val)):
        if not 0 <= count <= MAX_IMAGES_PER_SPLIT:
            raise ValueError(f"--{name} must be between 0 and {MAX_IMAGES_PER_SPLIT}, got {count}")
    layout = ShapesWorldLayout(Path(out))
    if layout.root.exists() and not layout.root.is_dir():
        raise NotADirectoryError(f"{layout.root} exists and is not a folder")
    ref_images, ref_annotations, refs = [], [], []
    counts: dict[str, dict[str, int]] = {}
    for split, count in (("train", train), ("val", val)):
        writer = _SplitWriter(layout, split)
        for record in tqdm(
            iter_split(seed, split, count, config), total=count, desc=f"ShapesWorld {split}", disable=not progress
        ):
            writer.add(record)
            ref_images.append({**record.image, "file_name": f"{split}/{record.image['file_name']}"})
            ref_annotations += record.objects
            for ann_id, sentences in record.refs:
                refs.append(_ref_entry(len(refs), ann_id, record, sentences, split))
        counts[split] = writer.finish(seed, config)
        counts[split]["drawings"] = write_drawings(layout.root, split, count, seed, config, progress)
    _write_json(
        layout.ref_instances,
        {"info": _info(seed), "images": ref_images, "annotations": ref_annotations, "categories": categories()},
    )
    layout.refs.parent.mkdir(parents=True, exist_ok=True)
    with open(layout.refs, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    card = {
        "name": "ShapesWorld",
        "version": VERSION,
        "seed": seed,
        "config": {**asdict(config), "holdout_pairs": [list(p) for p in config.holdout_pairs]},
        "image_id_base": _ID_BASE,
        "splits": counts,
        "categories": list(CATEGORIES),
        "colors": list(COLORS),
        "keypoints": list(KEYPOINT_NAMES),
    }
    _write_json(layout.card, card)
    logger.info("wrote ShapesWorld (%s) to %s", counts, layout.root)
    return layout


def _info(seed: int) -> dict[str, Any]:
    return {
        "description": "ShapesWorld, a procedural world for vision-language tasks",
        "version": VERSION,
        "year": 2026,
        "seed": seed,
    }


def _ref_entry(ref_id: int, ann_id: int, record: ImageRecord, sentences: list[str], split: str) -> dict[str, Any]:
    ann = next(a for a in record.objects if a["id"] == ann_id)
    first_sent = ref_id * 10
    return {
        "sent_ids": [first_sent + i for i in range(len(sentences))],
        "file_name": f"{Path(record.image['file_name']).stem}_{ann_id}.png",
        "ann_id": ann_id,
        "ref_id": ref_id,
        "image_id": record.image["id"],
        "split": split,
        "sentences": [
            {"tokens": s.split(), "raw": s, "sent_id": first_sent + i, "sent": s} for i, s in enumerate(sentences)
        ],
        "category_id": ann["category_id"],
    }


class _SplitWriter:
    """Accumulates one split's annotations while its images are written, then writes the JSON files."""

    def __init__(self, layout: ShapesWorldLayout, split: str) -> None:
        self.layout, self.split = layout, split
        for folder in (layout.image_dir(split), layout.semantic_dir(split), layout.edit_dir(split)):
            folder.mkdir(parents=True, exist_ok=True)
        self.images: list[dict] = []
        self.objects: list[dict] = []
        self.keypoints: list[dict] = []
        self.stars: list[dict] = []
        self.captions: list[dict] = []
        self.questions: list[dict] = []
        self.answers: list[dict] = []
        self.conversations: list[dict] = []
        self.regions: list[dict] = []
        self.prompts: list[dict] = []
        self.edits: list[dict] = []

    def add(self, r: ImageRecord) -> None:
        layout, split = self.layout, self.split
        image_id = r.image["id"]
        _write_png(layout.image(split, image_id), r.rendered.image)
        _write_png(layout.semantic_dir(split) / image_file_name(image_id), r.semantic)
        self.images.append(r.image)
        self.objects += r.objects
        self.keypoints += r.keypoints
        self.stars += r.stars
        base = image_id * 10
        self.captions += [{"image_id": image_id, "id": base + i, "caption": c} for i, c in enumerate(r.captions)]
        for i, (q, answers) in enumerate(zip(r.questions, r.answers, strict=True)):
            question_id = image_id * 100 + i
            self.questions.append({"image_id": image_id, "question": q.question, "question_id": question_id})
            self.answers.append(
                {
                    "question_type": q.question_type,
                    "multiple_choice_answer": q.answer,
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)
                    ],
                    "image_id": image_id,
                    "answer_type": q.answer_type,
                    "question_id": question_id,
                }
            )
        self.conversations.append({"id": str(image_id), "image": r.image["file_name"], "conversations": r.conversation})
        self.regions += r.regions
        rel_image = f"images/{split}/{r.image['file_name']}"
        self.prompts.append({"image_id": image_id, "image": rel_image, "prompt": r.captions[0]})
        if r.edit is not None:
            instruction, target_scene = r.edit
            target = render_scene(target_scene).image
            _write_png(layout.edit_dir(split) / r.image["file_name"], target)
            self.edits.append(
                {
                    "id": image_id,
                    "image_id": image_id,
                    "input_image": rel_image,
                    "edit_prompt": instruction,
                    "edited_image": f"editing/{split}/{r.image['file_name']}",
                }
            )

    def finish(self, seed: int, config: ShapesWorldConfig) -> dict[str, int]:
        layout, split = self.layout, self.split
        info = _info(seed)
        cats = categories()
        _write_json(
            layout.instances(split),
            {"info": info, "licenses": [], "images": self.images, "annotations": self.objects, "categories": cats},
        )
        _write_json(
            layout.keypoints(split),
            {
                "info": info,
                "licenses": [],
                "images": self.images,
                "annotations": self.keypoints,
                "categories": [cats[-1]],
            },
        )
        _write_json(
            layout.star_keypoints(split),
            {
                "info": info,
                "licenses": [],
                "images": self.images,
                "annotations": self.stars,
                "categories": [star_category()],
            },
        )
        _write_json(
            layout.captions(split), {"info": info, "licenses": [], "images": self.images, "annotations": self.captions}
        )
        common = {"info": info, "task_type": "Open-Ended", "data_type": "shapes", "data_subtype": split, "license": {}}
        _write_json(layout.vqa_questions(split), {**common, "questions": self.questions})
        _write_json(layout.vqa_annotations(split), {**common, "annotations": self.answers})
        _write_json(layout.conversations(split), self.conversations)
        _write_json(layout.regions(split), {"info": info, "images": self.images, "regions": self.regions})
        _write_json(layout.generation(split), {"info": info, "prompts": self.prompts})
        _write_json(layout.edits(split), {"info": info, "edits": self.edits})
        return {
            "images": len(self.images),
            "objects": len(self.objects),
            "people": len(self.keypoints),
            "stars": len(self.stars),
            "captions": len(self.captions),
            "questions": len(self.questions),
            "conversations": len(self.conversations),
            "regions": len(self.regions),
            "edits": len(self.edits),
        }
