"""Benchmark: ShapesWorld generation speed on one core.

Measures two things per image size:
- `in_memory`: sample a scene, render it, and build every annotation (COCO objects and polygons,
  keypoints, captions, referring expressions, questions, conversation, region prompts, the edit);
- `to_disk`: `generate_shapesworld`, which also renders the edit targets and writes three PNGs per
  image and all JSON files.

    python bench/shapes_speed.py --out docs/benchmarks/shapes_speed.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from visionllm.data.shapes.dataset import generate_shapesworld, make_image
from visionllm.data.shapes.scene import ShapesWorldConfig


def measure(size: int, images: int, repeats: int) -> dict[str, float]:
    config = ShapesWorldConfig(image_size=size)
    in_memory, to_disk = [], []
    for i in range(20):  # warm up caches and lazy imports
        make_image(0, "val", i, config)
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(images):
            make_image(0, "train", i, config)
        in_memory.append(images / (time.perf_counter() - start))
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            generate_shapesworld(Path(folder) / "w", images, 0, config, seed=0, progress=False)
            to_disk.append(images / (time.perf_counter() - start))
    return {"size": size, "in_memory_img_per_s": max(in_memory), "to_disk_img_per_s": max(to_disk)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/shapes_speed.md"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    rows = [measure(size, args.images, args.repeats) for size in args.sizes]
    lines = [
        "# ShapesWorld generation speed",
        "",
        f"One core ({platform.processor() or platform.machine()}, Python {platform.python_version()}), "
        f"{args.images} images, best of {args.repeats}. Produced by `python bench/shapes_speed.py`.",
        "",
        "| image size | in memory (img/s) | written to disk (img/s) |",
        "|---|---|---|",
        *(f"| {r['size']} | {r['in_memory_img_per_s']:.0f} | {r['to_disk_img_per_s']:.0f} |" for r in rows),
        "",
        "In memory: scene sampling, rendering and every annotation. Written to disk: also the edit targets, three",
        "PNGs per image (image, semantic map, edit target) and the JSON files.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
