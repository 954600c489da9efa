"""Where a v2 model's detection goes wrong: finding objects, or naming them.

For each model: a request for ShapesWorld's six categories on the first val images; for every annotated object,
whether some detection (any score) overlaps it at IoU >= 0.5 (found), and which category the most confident of those
names (the confusion matrix: rows the true category, columns the named one, last column none found). Beside it, the
cosine between the six categories' features (the object decoder's MLP of the LLM's query states after each
"name [DET]"): features that nearly coincide cannot be told apart by the decoder, whatever it sees.

    python bench/v2_confusion.py --models checkpoints/visionllm-v2-tiny --images 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from visionllm.data.shapes.dataset import ShapesWorldLayout
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.loading import load_pretrained
from visionllm.models.v2.chat import Turn
from visionllm.models.v2.model import ChatExample
from visionllm.ops.boxes import box_iou

ROOT = Path(__file__).resolve().parents[1]


def confusion(model, root: Path, images: int) -> tuple[np.ndarray, list[str]]:
    """(6, 7) counts: true category x named category of the best overlapping detection (last column: none)."""
    layout = ShapesWorldLayout(root)
    coco = json.loads(layout.instances("val").read_text())
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    by_id = {c["id"]: c["name"] for c in coco["categories"]}
    objects: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        objects.setdefault(a["image_id"], []).append(a)
    chosen = coco["images"][:images]
    request = build_instruction(Task.DETECTION, classes=names)
    counts = np.zeros((len(names), len(names) + 1), np.int64)
    for start in range(0, len(chosen), 10):
        batch = chosen[start : start + 10]
        paths = [layout.image("val", im["id"]) for im in batch]
        for im, out in zip(batch, model.predict(paths, [request] * len(batch), min_score=0.0), strict=True):
            found = out.prediction
            for a in objects.get(im["id"], []):
                x, y, w, h = a["bbox"]
                truth = names.index(by_id[a["category_id"]])
                ious = box_iou(np.array([[x, y, x + w, y + h]]), found.boxes_xyxy_px.reshape(-1, 4))[0]
                hits = np.flatnonzero(ious >= 0.5)
                named = names.index(found.class_names[hits[np.argmax(found.scores[hits])]]) if len(hits) else -1
                counts[truth, named] += 1
    return counts, names


def feature_cosines(model, root: Path, names: list[str]) -> np.ndarray:
    """The cosines between the categories' features in a six-category detection answer."""
    plan = model._plan(build_instruction(Task.DETECTION, classes=names), [], ())
    image = next(ShapesWorldLayout(root).image_dir("val").iterdir())
    example = ChatExample(model.processor.image(image), (Turn("user", plan.request), Turn("assistant", plan.answer)))
    batch = model.processor.collate([example], model.link)
    with torch.no_grad():
        routed = model.routed(model.hidden_states(batch), batch.input_ids)
        features = model.object_decoder.categories.pool.pooled(routed["object"][0]).float()
    unit = torch.nn.functional.normalize(features, dim=-1)
    return (unit @ unit.T).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, default=[ROOT / "checkpoints/visionllm-v2-tiny"])
    parser.add_argument("--shapesworld", type=Path, default=ROOT / "data/shapesworld")
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    for folder in args.models:
        model = load_pretrained(folder)
        counts, names = confusion(model, args.shapesworld, args.images)
        total = counts.sum()
        right = int(np.trace(counts[:, : len(names)]))
        print(f"\n{folder}: {total} objects, {total - counts[:, -1].sum()} found, {right} named right")
        print("| true \\ named | " + " | ".join(names) + " | none |")
        print("|---" * (len(names) + 2) + "|")
        for name, row in zip(names, counts, strict=True):
            print(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        cosines = feature_cosines(model, args.shapesworld, names)
        print("\ncategory-feature cosines\n| | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for name, row in zip(names, cosines, strict=True):
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main()
