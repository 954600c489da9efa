"""What the training comparisons share (bench/v2_vision.py, bench/v2_denoising.py): one variant trained from its
first step in its own folder, and the results written as a Markdown table with its JSON beside it."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from visionllm.eval.runner import evaluate_shapesworld
from visionllm.models.loading import load_pretrained
from visionllm.train.loop import train


def run_variant(
    name: str, preset: dict[str, Any], work: Path, steps: int, root: Path, tasks: Sequence[str], images: int
) -> dict[str, Any]:
    """Train `preset` (a preset file's content) for `steps` in `work` (emptied first), then evaluate `tasks` on
    the first `images` val images of the ShapesWorld at `root`: the row of the table (variant, steps, minutes and
    the metrics)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = work / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    started = time.perf_counter()
    final = train(path, max_steps=steps)
    minutes = (time.perf_counter() - started) / 60
    metrics = evaluate_shapesworld(load_pretrained(final), root, "val", tasks, images, progress=False)
    row = {"variant": name, "steps": steps, "minutes": round(minutes, 1), **metrics}
    print(json.dumps(row))
    return row


COMMON = [("variant", "variant", "{}"), ("steps", "steps", "{}"), ("minutes", "minutes", "{}")]
"""The first columns of every comparison: (title, key of the row, format)."""


def write_table(
    out: Path, heading: Sequence[str], columns: Sequence[tuple[str, str, str]], rows: Sequence[dict[str, Any]]
) -> None:
    """`out` (Markdown): the heading lines, then a table of `COMMON` and `columns` (title, key, format; a missing
    key shows as nan), one row per result; `out` with .json: the rows."""
    columns = [*COMMON, *columns]
    lines = [*heading, "", "| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f.format(r.get(k, float("nan"))) for _, k, f in columns) + " |" for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(list(rows), indent=2) + "\n")
    print("\n".join(lines))
