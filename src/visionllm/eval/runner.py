"""Evaluate a model: on any COCO-format set, or on every task of a ShapesWorld split.

Detection-style tasks use the dataset's category names as the instruction's class set and score
with pycocotools; grounding scores P@0.5 on the first (best) box; captions BLEU-4 / CIDEr; VQA the
official accuracy. On ShapesWorld, captions and VQA also get controls that show how much of the score
comes from the image (`visionllm.eval.controls`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from visionllm.data.readers import DatasetFormatError, load_label_map, read_coco_instances, read_coco_keypoints
from visionllm.data.shapes.dataset import ShapesWorldLayout, image_file_name
from visionllm.data.shapes.drawings import load_drawings
from visionllm.data.shapes.load import load_split
from visionllm.data.shapes.scene import CATEGORIES, COLORS
from visionllm.eval.controls import QuestionPrior, derangement
from visionllm.eval.metrics import (
    caption_metrics,
    coco_metrics,
    grounding_precision,
    interactive_iou,
    mean_iou,
    vqa_accuracy,
)
from visionllm.eval.render_check import evaluate_editing, evaluate_generation
from visionllm.formats.keypoints import STAR_KEYPOINT_NAMES, STAR_KEYPOINT_SIGMA
from visionllm.formats.results import Decoded, Detections, SegmentationMap, TextAnswer
from visionllm.formats.task_table import Instruction, build_instruction, tasks_of_version
from visionllm.formats.tasks import Task
from visionllm.ops.polygons import polygons_to_mask, rle_to_mask

logger = logging.getLogger(__name__)

COCO_TASKS = {
    "detect": ("bbox", Task.DETECTION),
    "segment": ("segm", Task.INSTANCE_SEGMENTATION),
    "keypoints": ("keypoints", Task.KEYPOINTS),
}


class Predictor(Protocol):
    """What the runner needs of a model: `predict`, and its `version` (which tasks it answers)."""

    version: int

    def predict(
        self, images: Sequence[Any], instructions: Sequence[str | Instruction], min_score: float = ...
    ) -> list[Decoded]: ...


def _batched(
    model: Predictor,
    pairs: Sequence[tuple[Any, Instruction]],
    batch_size: int,
    desc: str,
    progress: bool,
    min_score: float = 0.05,
    regions: Sequence[Sequence[Any]] | None = None,
) -> list[Decoded]:
    """`model.predict` over the pairs in batches (`regions`: each pair's visual prompts, for v2 models)."""
    out: list[Decoded] = []
    for start in tqdm(range(0, len(pairs), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = pairs[start : start + batch_size]
        extra = {"regions": regions[start : start + batch_size]} if regions is not None else {}
        out += model.predict([p[0] for p in chunk], [p[1] for p in chunk], min_score=min_score, **extra)
    return out


SHAPESWORLD_TASKS = (
    "detection",
    "instance_segmentation",
    "keypoints",
    "grounding",
    "caption",
    "vqa",
    "interactive_segmentation",
    "region_caption",
    "semantic_segmentation",
    "generation",
    "editing",
)
"""The tasks `evaluate_shapesworld` has a metric for, in the order it runs them (the last five need a model of
version 2: visual prompts, masks, the image decoders)."""

RENDER_CHECK_DRAWINGS = 200
"""Drawings the render-check generates and edits (fewer with `limit`): each image costs a full denoising run."""


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number of images >= 1 (or None for all), got {limit!r}")


def evaluate_coco(
    model: Predictor,
    annotation_path: str | Path,
    image_dir: str | Path,
    task: str = "detect",
    points: int = 16,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    ground_truth: dict | None = None,
) -> dict[str, float]:
    """COCO metrics of `task` ("detect", "segment", "keypoints") on a COCO-format set.

    The instruction binds the file's category names, in id order (keypoints: the keypoint categories).
    """
    if task not in COCO_TASKS:
        raise ValueError(f"task must be one of {sorted(COCO_TASKS)}, got {task!r}")
    iou_type, kind = COCO_TASKS[task]
    _check_limit(limit)
    if ground_truth is None:
        # The readers check every field and name the file and entry at fault (DatasetFormatError).
        if kind is Task.KEYPOINTS:
            read_coco_keypoints(annotation_path, image_dir)
        else:
            read_coco_instances(annotation_path, image_dir)
    gt = ground_truth if ground_truth is not None else json.loads(Path(annotation_path).read_text())
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    if kind is Task.KEYPOINTS:
        categories = [c for c in categories if c.get("keypoints")]
    if not categories:
        raise DatasetFormatError(f"{annotation_path}: no categories to evaluate (`categories` is empty)")
    names = [c["name"] for c in categories]
    ids = {c["name"]: c["id"] for c in categories}
    images = sorted(gt["images"], key=lambda im: im["id"])[:limit]
    codec = model.config.codec()
    if kind is Task.KEYPOINTS:
        instruction = build_instruction(kind, classes=names, config=codec)
    elif kind is Task.INSTANCE_SEGMENTATION:
        instruction = build_instruction(kind, classes=names, num_points=points, config=codec)
    else:
        instruction = build_instruction(kind, classes=names, config=codec)
    pairs = [(Path(image_dir) / im["file_name"], instruction) for im in images]
    missing = [str(path) for path, _ in pairs if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(pairs)} images of {annotation_path} are not in {image_dir}, e.g. {missing[0]}"
        )
    decoded = _batched(model, pairs, batch_size, f"eval {task}", progress, min_score=0.01)
    results = []
    for im, d in zip(images, decoded, strict=True):
        if isinstance(d.prediction, Detections):
            results += d.prediction.to_coco(im["id"], ids)
    return coco_metrics(gt, results, iou_type, image_ids=[im["id"] for im in images])


def evaluate_shapesworld(
    model: Predictor,
    root: str | Path,
    split: str = "val",
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    controls: bool = True,
) -> dict[str, float]:
    """Every metric of the tasks the model answers on a ShapesWorld split (detection and segmentation bind the COCO
    categories of the split: circle, square, triangle, star, hexagon, person).

    With `controls`, caption and VQA also report what they score without the image (see `eval.controls`):
    `BLEU-4_blind`, `CIDEr_blind` and `vqa_accuracy_blind` are the same evaluation with every image replaced
    by another image of the evaluated set (one more pass of each task; questions and references unchanged),
    and `vqa_prior` is the accuracy of the question-only prior fitted on the train split's VQA answers.

    Returns:
        Flat metrics: box_AP, box_AP50, box_AP75, mask_AP, mask_AP50, keypoint_AP, keypoint_AP50,
        grounding_P@0.5, BLEU-4, CIDEr, vqa_accuracy; for v2 models also interactive_mIoU,
        region_caption_accuracy, semantic_mIoU and, beside keypoint_AP, star_keypoint_AP / _AP50 (when the
        dataset has the stars' keypoints); and with `controls` BLEU-4_blind, CIDEr_blind, vqa_accuracy_blind,
        vqa_prior (for the tasks asked; a control that cannot be computed, on fewer than
        two images or without train questions, is left out with a warning).
    """
    _check_limit(limit)
    answered_tasks = getattr(model, "TASKS", None) or tasks_of_version(model.version)
    if tasks is None:  # every task the model answers and ShapesWorld evaluates
        tasks = [task for task in SHAPESWORLD_TASKS if Task(task) in answered_tasks]
    unknown = sorted(set(tasks) - set(SHAPESWORLD_TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(SHAPESWORLD_TASKS)}")
    answered = {task.value for task in answered_tasks}
    beyond = sorted(set(tasks) - answered)
    if beyond:
        raise ValueError(f"a version-{model.version} model does not answer {beyond}; it answers {sorted(answered)}")
    layout = ShapesWorldLayout(Path(root))
    if not layout.card.exists():
        raise FileNotFoundError(
            f"{root} is not a ShapesWorld folder ({layout.card.name} is missing): write one with "
            f"`visionllm data shapes --out {root}`"
        )
    # Detection and segmentation bind the file's categories (the five shapes and person), as
    # `visionllm eval --coco-json` does for any COCO set.
    view = json.loads(layout.instances(split).read_text())
    image_dir = layout.image_dir(split)
    if limit is not None:
        keep = {im["id"] for im in sorted(view["images"], key=lambda im: im["id"])[:limit]}
        view = {
            **view,
            "images": [im for im in view["images"] if im["id"] in keep],
            "annotations": [a for a in view["annotations"] if a["image_id"] in keep],
        }

    def boxes() -> dict[str, float]:
        m = evaluate_coco(model, None, image_dir, "detect", batch_size=batch_size, progress=progress, ground_truth=view)
        return {"box_AP": m["AP"], "box_AP50": m["AP50"], "box_AP75": m["AP75"]}

    def masks() -> dict[str, float]:
        m = evaluate_coco(
            model, None, image_dir, "segment", points=16, batch_size=batch_size, progress=progress, ground_truth=view
        )
        return {"mask_AP": m["AP"], "mask_AP50": m["AP50"]}

    def keypoint_truth(path: Path) -> dict:
        """A keypoint file's ground truth on the evaluated images that hold its objects."""
        gt = json.loads(path.read_text())
        if limit is not None:
            keep = {im["id"] for im in sorted(gt["images"], key=lambda im: im["id"])[:limit]}
            gt = {
                **gt,
                "images": [im for im in gt["images"] if im["id"] in keep],
                "annotations": [a for a in gt["annotations"] if a["image_id"] in keep],
            }
        holding = {a["image_id"] for a in gt["annotations"]}
        return {**gt, "images": [im for im in gt["images"] if im["id"] in holding]}

    def people() -> dict[str, float]:
        gt = keypoint_truth(layout.keypoints(split))
        m = evaluate_coco(
            model, None, image_dir, "keypoints", batch_size=batch_size, progress=progress, ground_truth=gt
        )
        metrics = {"keypoint_AP": m["AP"], "keypoint_AP50": m["AP50"]}
        if model.version >= 2 and layout.star_keypoints(split).exists():
            metrics.update(stars())
        return metrics

    def stars() -> dict[str, float]:
        """The stars' tips, a second skeleton named in the request (v2 models, which take any skeleton)."""
        gt = keypoint_truth(layout.star_keypoints(split))
        images = sorted(gt["images"], key=lambda im: im["id"])
        instruction = build_instruction(Task.KEYPOINTS, classes=["star"], keypoint_names=STAR_KEYPOINT_NAMES)
        results = []
        for start in tqdm(range(0, len(images), batch_size), desc="eval star keypoints", disable=not progress):
            chunk = images[start : start + batch_size]
            paths = [image_dir / im["file_name"] for im in chunk]
            decoded = model.predict(
                paths, [instruction] * len(chunk), min_score=0.01, keypoint_names=STAR_KEYPOINT_NAMES
            )
            for im, d in zip(chunk, decoded, strict=True):
                if isinstance(d.prediction, Detections):
                    results += d.prediction.to_coco(im["id"], {"star": gt["categories"][0]["id"]})
        sigmas = [STAR_KEYPOINT_SIGMA] * len(STAR_KEYPOINT_NAMES)
        m = coco_metrics(gt, results, "keypoints", image_ids=[im["id"] for im in images], keypoint_sigmas=sigmas)
        return {"star_keypoint_AP": m["AP"], "star_keypoint_AP50": m["AP50"]}

    def grounding() -> dict[str, float]:
        refs = load_split(root, split, Task.GROUNDING)[: limit * 2 if limit else None]
        codec = model.config.codec()
        pairs = [
            (r.image_path, build_instruction(Task.GROUNDING, expression=r.expressions[0], config=codec)) for r in refs
        ]
        decoded = _batched(model, pairs, batch_size, "eval grounding", progress, min_score=0.0)
        predicted = [
            d.prediction.boxes_xyxy_px[0] if isinstance(d.prediction, Detections) and len(d.prediction) else None
            for d in decoded
        ]
        return {"grounding_P@0.5": grounding_precision(predicted, [r.objects[0].box_xyxy_px for r in refs])}

    def captions() -> dict[str, float]:
        samples = load_split(root, split, Task.CAPTION)[:limit]
        instruction = build_instruction(Task.CAPTION)
        references = {s.image_id: list(s.captions) for s in samples}

        def score(images: Sequence[Path], desc: str) -> dict[str, float]:
            decoded = _batched(model, [(image, instruction) for image in images], batch_size, desc, progress)
            predictions = {s.image_id: _text(d) for s, d in zip(samples, decoded, strict=True)}
            m = caption_metrics(predictions, references)
            return {"BLEU-4": m["BLEU-4"], "CIDEr": m["CIDEr"]}

        images = [s.image_path for s in samples]
        metrics = score(images, "eval caption")
        swapped = _swapped(images) if controls else None
        if swapped is not None:
            metrics.update({f"{k}_blind": v for k, v in score(swapped, "eval caption (blind)").items()})
        return metrics

    def vqa() -> dict[str, float]:
        samples = load_split(root, split, Task.VQA)[: limit * 2 if limit else None]
        instructions = [build_instruction(Task.VQA, question=s.qa.question) for s in samples]
        annotations = json.loads(layout.vqa_annotations(split).read_text())["annotations"]
        wanted = {s.qa.question_id for s in samples}
        annotations = [a for a in annotations if a["question_id"] in wanted]

        def accuracy(answers: Sequence[str], name: str) -> dict[str, float]:
            """`name` and `name[<question type>]` (how many, what color is the, ...)."""
            predictions = {s.qa.question_id: a for s, a in zip(samples, answers, strict=True)}
            scores = vqa_accuracy(predictions, annotations)
            by_type = {k.removeprefix("accuracy"): v for k, v in scores.items() if k.startswith("accuracy[")}
            return {name: scores["accuracy"], **{name + k: v for k, v in sorted(by_type.items())}}

        def answers(images: Sequence[Path], desc: str) -> list[str]:
            pairs = list(zip(images, instructions, strict=True))
            return [_text(d) for d in _batched(model, pairs, batch_size, desc, progress)]

        images = [s.image_path for s in samples]
        metrics = accuracy(answers(images, "eval vqa"), "vqa_accuracy")
        if not controls:
            return metrics
        swapped = _swapped(images)
        if swapped is not None:
            metrics.update(accuracy(answers(swapped, "eval vqa (blind)"), "vqa_accuracy_blind"))
        train = load_split(root, "train", Task.VQA) if layout.vqa_questions("train").exists() else []
        if train:
            prior = QuestionPrior.fit(train)
            metrics.update(accuracy([prior.answer(s.qa.question) for s in samples], "vqa_prior"))
        else:
            logger.warning("no train VQA questions in %s: vqa_prior left out", root)
        return metrics

    def regions() -> list[tuple[dict, dict]]:
        """The split's region prompts with their objects' annotations, on the evaluated images."""
        annotations = {a["id"]: a for a in view["annotations"]}  # the evaluated images' objects
        data = json.loads(layout.regions(split).read_text())
        return [(r, annotations[r["ann_id"]]) for r in data["regions"] if r["ann_id"] in annotations]

    def interactive() -> dict[str, float]:
        chosen = regions()
        instruction = build_instruction(Task.INTERACTIVE_SEGMENTATION, regions="region1 <region>")
        paths = [image_dir / image_file_name(r["image_id"]) for r, _ in chosen]
        sizes = {im["id"]: (im["height"], im["width"]) for im in view["images"]}
        targets = [_annotation_mask(a, *sizes[r["image_id"]]) for r, a in chosen]
        prompts = [[("point", inner_point(mask))] for mask in targets]
        decoded = _batched(
            model, list(zip(paths, [instruction] * len(paths), strict=True)), batch_size, "eval interactive", progress,
            0.0, prompts,
        )  # fmt: skip
        masks = [_first_mask(d, t.shape) for d, t in zip(decoded, targets, strict=True)]
        return {"interactive_mIoU": interactive_iou(masks, targets)["mIoU"]}

    def region_captions() -> dict[str, float]:
        chosen = regions()
        instruction = build_instruction(Task.REGION_CAPTION, regions="region1 <region>")
        paths = [image_dir / image_file_name(r["image_id"]) for r, _ in chosen]
        prompts = [[region_prompt_of(r["prompt"])] for r, _ in chosen]
        pairs = list(zip(paths, [instruction] * len(paths), strict=True))
        decoded = _batched(model, pairs, batch_size, "eval region caption", progress, 0.05, prompts)
        right = [
            names_object(_text(d), a["attributes"]["color"], category_name[a["category_id"]])
            for d, (_, a) in zip(decoded, chosen, strict=True)
        ]
        return {"region_caption_accuracy": sum(right) / max(1, len(right))}

    def semantic() -> dict[str, float]:
        samples = load_split(root, split, Task.SEMANTIC_SEGMENTATION)
        kept = {im["id"] for im in view["images"]}
        samples = [s for s in samples if int(s.image_id) in kept]
        names = [category_name[i] for i in sorted(category_name)]
        instruction = build_instruction(Task.SEMANTIC_SEGMENTATION, classes=names)
        pairs = [(s.image_path, instruction) for s in samples]
        decoded = _batched(model, pairs, batch_size, "eval semantic", progress)
        ids = np.array([0, *sorted(category_name)])  # label i + 1 is names[i]
        predicted = [ids[d.prediction.labels] if isinstance(d.prediction, SegmentationMap) else None for d in decoded]
        targets = [load_label_map(s.semantic_mask_path).astype(np.int64) for s in samples]
        predicted = [p if p is not None else np.zeros_like(t) for p, t in zip(predicted, targets, strict=True)]
        return {"semantic_mIoU": mean_iou(predicted, targets, num_classes=len(ids))["mIoU"]}

    def drawings() -> list:
        return load_drawings(root, split)[: min(limit or RENDER_CHECK_DRAWINGS, RENDER_CHECK_DRAWINGS)]

    def generation() -> dict[str, float]:
        return evaluate_generation(model, drawings(), batch_size=2 * batch_size, progress=progress, controls=controls)

    def editing() -> dict[str, float]:
        return evaluate_editing(model, drawings(), batch_size=2 * batch_size, progress=progress, controls=controls)

    category_name = {c["id"]: c["name"] for c in view["categories"]}
    runners: dict[str, Callable[[], dict[str, float]]] = {
        "detection": boxes,
        "instance_segmentation": masks,
        "keypoints": people,
        "grounding": grounding,
        "caption": captions,
        "vqa": vqa,
        "interactive_segmentation": interactive,
        "region_caption": region_captions,
        "semantic_segmentation": semantic,
        "generation": generation,
        "editing": editing,
    }
    metrics: dict[str, float] = {}
    for task in tasks:
        metrics.update(runners[task]())
    return metrics


def _swapped(images: Sequence[Path]) -> list[Path] | None:
    """Each image replaced by another of the set (`derangement`); None, with a warning, below two images."""
    try:
        swap = derangement(images)
    except ValueError:
        logger.warning("blind controls need at least 2 distinct images: left out")
        return None
    return [swap[image] for image in images]


def inner_point(mask: np.ndarray) -> list[float]:
    """The point deepest inside a mask (farthest from its outside; the first such pixel), [x, y] at the pixel's
    centre: the one-click prompt of interactive segmentation, deterministic."""
    inside = np.pad(mask.astype(bool), 1)
    depth = np.zeros(inside.shape, np.int32)
    layer = inside.copy()
    while layer.any():  # peel the mask one pixel at a time (4-neighbour erosion)
        depth += layer
        layer = layer & np.roll(layer, 1, 0) & np.roll(layer, -1, 0) & np.roll(layer, 1, 1) & np.roll(layer, -1, 1)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return [float(x - 1) + 0.5, float(y - 1) + 0.5]


def region_prompt_of(prompt: dict) -> tuple[str, Any]:
    """A ShapesWorld region prompt record as a (kind, data) visual prompt."""
    kind = prompt["type"]
    if kind == "point":
        return "point", prompt["point_xy_px"]
    if kind == "box":
        return "box", prompt["box_xyxy_px"]
    if kind == "scribble":
        return "scribble", prompt["points_xy_px"]
    return "mask", rle_to_mask(prompt["segmentation"]).astype(bool)


def names_object(text: str, color: str, category: str) -> bool:
    """Whether a description names the object's colour and its shape (people: "person"), and no other colour or
    shape."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    colours, shapes = words & set(COLORS), {w.removesuffix("s") for w in words} & set(CATEGORIES)
    return colours == {color} and shapes == {category}


def _annotation_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """A COCO annotation's mask: its polygons or its RLE."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segmentation]
        return polygons_to_mask(polygons, height, width).astype(bool)
    return rle_to_mask(segmentation).astype(bool)


def _first_mask(decoded: Decoded, shape: tuple[int, ...]) -> np.ndarray:
    prediction = decoded.prediction
    if isinstance(prediction, Detections) and prediction.masks is not None and len(prediction):
        return prediction.masks[0]
    return np.zeros(shape, bool)


def _text(decoded: Decoded) -> str:
    return decoded.prediction.text if isinstance(decoded.prediction, TextAnswer) else ""
