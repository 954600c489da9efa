"""Look at a ShapesWorld dataset: a text summary and a contact sheet, both read back through the
public-format readers (so they also check that what was written loads)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from visionllm.data.readers import (
    read_coco_captions,
    read_coco_instances,
    read_coco_keypoints,
    read_refcoco,
    read_vqav2,
)
from visionllm.data.sample import ObjectAnnotation, Sample
from visionllm.data.shapes.dataset import ShapesWorldLayout, image_file_name
from visionllm.data.shapes.scene import KEYPOINT_NAMES, SKELETON
from visionllm.formats.results import Detections
from visionllm.vis import contact_sheet, draw_detections, draw_text_below


def _card(root: Path) -> dict:
    layout = ShapesWorldLayout(root)
    if not layout.card.exists():
        raise FileNotFoundError(
            f"{layout.card} not found: {root} is not a ShapesWorld dataset "
            "(write one with `visionllm data shapes --out DIR`)"
        )
    return json.loads(layout.card.read_text())


def describe(root: str | Path) -> str:
    """A few lines saying what a ShapesWorld dataset holds, per split and per format."""
    root = Path(root)
    layout = ShapesWorldLayout(root)
    card = _card(root)
    config = card["config"]
    holdout = ", ".join(" ".join(p) for p in config["holdout_pairs"])
    lines = [
        f"ShapesWorld {card['version']} at {root}",
        f"  seed {card['seed']}, {config['image_size']} px, "
        f"{config['min_objects']}-{config['max_objects']} objects per image"
        + (f", held out of train: {holdout}" if holdout else ""),
    ]
    for split, counts in card["splits"].items():
        if not counts["images"]:
            continue
        instances = read_coco_instances(layout.instances(split), layout.image_dir(split))
        per_category = Counter(o.category for s in instances for o in s.objects)
        per_phrase = Counter(f"{o.attributes.get('color')} {o.category}" for s in instances for o in s.objects)
        lines.append(
            f"  {split}: {counts['images']} images, {counts['objects']} objects "
            f"({', '.join(f'{k} {v}' for k, v in sorted(per_category.items()))}), "
            f"{len(per_phrase)} colour-category pairs"
        )
        lines.append(
            f"    {counts['people']} people with keypoints, {counts['captions']} captions, "
            f"{counts['questions']} questions, "
            f"{counts['conversations']} conversations, {counts['regions']} region prompts, {counts['edits']} edits"
        )
    refs = read_refcoco(layout.refs, layout.ref_instances, layout.ref_image_dir)
    lines.append(f"  referring expressions: {len(refs)} refs, {sum(len(r.expressions) for r in refs)} sentences")
    files = [
        *sorted(p.relative_to(root).as_posix() for p in root.rglob("*.json")),
        layout.refs.relative_to(root).as_posix(),
    ]
    lines.append("  files: " + ", ".join(files))
    return "\n".join(lines)


def _as_detections(objects: tuple[ObjectAnnotation, ...], keypoints: dict[int | None, np.ndarray]) -> Detections:
    """Ground truth as a Detections, to draw it the way predictions are drawn."""
    names = tuple(f"{o.attributes.get('color', '')} {o.category}".strip() for o in objects)
    polygons = tuple(max(o.polygons_xy_px, key=len) if o.polygons_xy_px else np.zeros((3, 2)) for o in objects)
    points = np.zeros((len(objects), len(KEYPOINT_NAMES), 3))
    for i, o in enumerate(objects):
        if o.ann_id in keypoints:
            points[i] = keypoints[o.ann_id]
            points[i, points[i, :, 2] == 0] = 0
    return Detections(
        np.array([o.box_xyxy_px for o in objects]).reshape(-1, 4),
        np.ones(len(objects)),
        names,
        polygons_xy_px=polygons,
        keypoints_xyv_px=points,
    )


def write_contact_sheet(root: str | Path, split: str, out: str | Path, count: int = 8, scale: float = 3.0) -> Path:
    """Draw `count` images of a split with their boxes, polygons, keypoints, a caption, a referring
    expression and a question, and save the sheet as a PNG.

    Returns:
        The path written.
    """
    root, out = Path(root), Path(out)
    layout = ShapesWorldLayout(root)
    _card(root)
    instances = read_coco_instances(layout.instances(split), layout.image_dir(split))[:count]
    if not instances:
        raise ValueError(f"the {split} split of {root} has no images")
    people = {s.image_id: s for s in read_coco_keypoints(layout.keypoints(split), layout.image_dir(split))}
    captions = {s.image_id: s for s in read_coco_captions(layout.captions(split), layout.image_dir(split))}
    refs: dict = {}
    for s in read_refcoco(layout.refs, layout.ref_instances, layout.ref_image_dir, split=split):
        refs.setdefault(s.image_id, s)
    questions: dict = {}
    for s in read_vqav2(
        layout.vqa_questions(split), layout.vqa_annotations(split), layout.image_dir(split), image_file_name
    ):
        questions.setdefault(s.image_id, s)
    tiles = []
    for sample in instances:
        image = Image.open(sample.image_path).convert("RGB")
        person = people.get(sample.image_id)
        keypoints = {o.ann_id: o.keypoints_xyv for o in person.objects} if person is not None else {}
        detections = _as_detections(sample.objects, keypoints)
        picture = draw_detections(image, detections, skeleton=SKELETON, scale=scale, show_scores=False)
        lines = _tile_text(
            sample, captions.get(sample.image_id), refs.get(sample.image_id), questions.get(sample.image_id)
        )
        tiles.append(draw_text_below(picture, lines))
    sheet = contact_sheet(tiles, columns=4)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _tile_text(sample: Sample, caption: Sample | None, ref: Sample | None, question: Sample | None) -> list[str]:
    lines = [f"#{sample.image_id}"]
    if caption is not None:
        lines.append(f"caption: {caption.captions[0]}")
    if ref is not None:
        lines.append(f"ref: {ref.expressions[0]}")
    if question is not None and question.qa is not None:
        answers = Counter(question.qa.answers).most_common(1)
        lines.append(f"Q: {question.qa.question} A: {answers[0][0] if answers else '?'}")
    return lines
