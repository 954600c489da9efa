"""Bulk inference: one instruction over a folder of images or a COCO file's images, on one process or many.

    visionllm predict --model M --input images/ --classes cross,arrow --out results.json
    torchrun --nproc_per_node 4 -m visionllm.cli predict --model M --input val.json --images val/ --out results.json

Images are taken in batches in a fixed order (a COCO file's image ids, or a folder's file names); batch k goes to
process k mod N, so that every batch is the same whatever N is, and each process appends the results of each batch
it finishes to its own part file (`<out>.parts/`) at once. A killed run started again with the same command reads
every part file, skips the images already done (whatever number of processes wrote them) and does the rest. When
all are done, the main process merges the parts into one results file, sorted by image, and removes them.

The results file is COCO's results format: detections (and masks, keypoints) as `image_id`, `category_id`,
`bbox` [x, y, w, h], `score`; captions as `image_id`, `caption`. Numbers are rounded (boxes to 0.01 px, scores to
1e-4), so that the same predictions made in batches of other shapes give the same file. A folder's images are
numbered 1..N in name order, and each entry also names its `file_name`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from visionllm.data.readers import read_coco_instances
from visionllm.formats.results import Detections, TextAnswer
from visionllm.formats.task_table import Instruction
from visionllm.train.distributed import process_state

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
BULK_TASKS = ("detection", "instance_segmentation", "keypoints", "caption")
"""The tasks bulk inference writes results of (COCO's results formats)."""


@dataclass(frozen=True)
class BulkImage:
    image_id: int
    path: Path
    file_name: str | None = None  # a folder's image: named in the results


def folder_images(folder: str | Path) -> list[BulkImage]:
    """A folder's images, in file-name order, numbered from 1."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of images")
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not names:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [BulkImage(i + 1, folder / name, name) for i, name in enumerate(names)]


def coco_images(annotation_path: str | Path, image_dir: str | Path) -> tuple[list[BulkImage], dict[str, int]]:
    """A COCO file's images (by id) and its category ids by name (read, and checked, by `read_coco_instances`)."""
    category_ids: dict[str, int] = {}
    samples = read_coco_instances(annotation_path, image_dir, category_ids=category_ids)
    found = sorted((BulkImage(s.image_id, s.image_path) for s in samples), key=lambda im: im.image_id)
    missing = [str(im.path) for im in found if not im.path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(found)} images of {annotation_path} are not found, e.g. {missing[0]}"
        )
    return found, category_ids


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _written(parts: Path) -> dict[int, list[dict[str, Any]]]:
    """The results the part files hold, by image id (a line cut short by a kill is not done: its image is done
    again)."""
    written: dict[int, list[dict[str, Any]]] = {}
    for part in sorted(parts.glob("*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                written[int(record["image_id"])] = record["results"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return written


def _entries(result: Any, image: BulkImage, category_ids: dict[str, int]) -> list[dict[str, Any]]:
    if isinstance(result, Detections):
        entries = result.to_coco(image.image_id, category_ids)
        for e in entries:
            e["bbox"] = [round(v, 2) for v in e["bbox"]]
            e["score"] = round(e["score"], 4)
            if isinstance(e.get("segmentation"), list):
                e["segmentation"] = [[round(v, 2) for v in poly] for poly in e["segmentation"]]
            if "keypoints" in e:
                e["keypoints"] = [round(v, 2) for v in e["keypoints"]]
    elif isinstance(result, TextAnswer):
        entries = [{"image_id": image.image_id, "caption": result.text}]
    else:
        raise ValueError(f"bulk inference writes {', '.join(BULK_TASKS)} results, not {type(result).__name__}")
    if image.file_name is not None:
        for e in entries:
            e["file_name"] = image.file_name
    return entries


def bulk_predict(
    model: Any,
    images: Sequence[BulkImage],
    instruction: Instruction,
    category_ids: dict[str, int],
    out: str | Path,
    batch_size: int = 8,
    min_score: float = 0.05,
    progress: bool = True,
) -> Path | None:
    """Predict `instruction` on every image; write the merged results to `out` (see the module docstring).

    Run on every process of a distributed launch (torchrun / accelerate launch), or on one.

    Returns: `out` on the main process (once merged), None on the others.
    """
    state = process_state()
    rank, world = state.process_index, state.num_processes
    out = Path(out)
    parts = parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    done = set(_written(parts))
    state.wait_for_everyone()  # every process has read the same parts before any writes
    todo = [im for im in images if im.image_id not in done]
    batches = [todo[k : k + batch_size] for k in range(0, len(todo), batch_size)]
    mine = batches[rank::world]
    part = parts / f"part-{rank:03d}-{os.getpid()}.jsonl"
    bar = tqdm(total=sum(len(b) for b in mine), desc="predict", disable=not (progress and state.is_main_process))
    with bar, open(part, "a", encoding="utf-8") as f:
        for batch in mine:
            decoded = model.predict([im.path for im in batch], [instruction] * len(batch), min_score=min_score)
            for im, d in zip(batch, decoded, strict=True):
                f.write(json.dumps({"image_id": im.image_id, "results": _entries(d.prediction, im, category_ids)}))
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    merged = _written(parts)
    missing = [im.image_id for im in images if im.image_id not in merged]
    if missing:
        raise RuntimeError(f"{len(missing)} images have no results in {parts} (e.g. image {missing[0]})")
    results = [e for image_id in sorted(merged) for e in merged[image_id]]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp", encoding="utf-8") as tmp:
        json.dump(results, tmp)
    os.replace(tmp.name, out)
    shutil.rmtree(parts, ignore_errors=True)
    return out
