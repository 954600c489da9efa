"""A plain COCO instances set drawn by ShapesWorld's renderer, with any shapes: a stand-in for a user's own data.

    root/
      images/{split}/{image_id:012d}.png
      annotations/instances_{split}.json     COCO instances: boxes, polygons, area; category ids 1..n in the order
                                             the shapes were given; colour and size as `attributes`

With shapes the base world never draws (`NEW_SHAPES`), its categories are ones a model trained on ShapesWorld has
never seen: what `visionllm finetune` is shown on (docs/finetune.md). Every image is a function of (seed, split,
index), as in ShapesWorld.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from visionllm.data.shapes.dataset import (
    _ID_BASE,
    _SPLIT_CODE,
    MAX_IMAGES_PER_SPLIT,
    SPLITS,
    _write_json,
    _write_png,
    image_file_name,
    instance_annotation,
)
from visionllm.data.shapes.scene import ShapesWorldConfig, render_scene, sample_scene_and_silhouettes


def instances_path(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def image_dir(root: str | Path, split: str) -> Path:
    return Path(root) / "images" / split


def write_coco_set(
    out: str | Path,
    train: int,
    val: int,
    config: ShapesWorldConfig,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Write a COCO instances set of `config.shapes` (people too when `config.person_probability` > 0) under `out`.

    Returns: per split, the images and objects written.
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a folder")
    names = list(config.shapes) + (["person"] if config.person_probability > 0 else [])
    category_id = {name: i + 1 for i, name in enumerate(names)}
    categories = [{"supercategory": "shape", "id": i, "name": n} for n, i in category_id.items()]
    counts = {}
    for split, count in zip(SPLITS, (train, val), strict=True):
        if not 0 <= count <= MAX_IMAGES_PER_SPLIT:
            raise ValueError(f"--{split} must be between 0 and {MAX_IMAGES_PER_SPLIT}, got {count}")
        image_dir(root, split).mkdir(parents=True, exist_ok=True)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for index in tqdm(range(count), desc=f"COCO set {split}", disable=not progress):
            image_id = _ID_BASE[split] + index + 1
            rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 7])
            scene, silhouettes = sample_scene_and_silhouettes(rng, config, train=split == "train")
            rendered = render_scene(scene, silhouettes)
            name = image_file_name(image_id)
            _write_png(image_dir(root, split) / name, rendered.image)
            images.append({"id": image_id, "file_name": name, "width": scene.size, "height": scene.size})
            for k, obj in enumerate(scene.objects):
                ann = instance_annotation(image_id, k, obj, rendered.visible[k], category_id[obj.category])
                if ann is not None:
                    annotations.append(ann)
        _write_json(
            instances_path(root, split),
            {"info": {"description": "shapes in COCO format"}, "images": images, "annotations": annotations,
             "categories": categories},
        )  # fmt: skip
        counts[split] = {"images": len(images), "objects": len(annotations)}
    return counts
