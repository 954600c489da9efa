"""Report: the learning curves of the shipped model's training, from the runs' log.jsonl files.

    python bench/training_report.py --runs runs/tiny-stage1 runs/tiny-stage2 \
        --out docs/benchmarks/training_default.md --plot docs/images/learning_curves.png

A run that was resumed logs some steps twice; the last record of each step wins.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LOSSES = ("loss", "tokenizer", "slot_class", "slot_l1", "text")
FLOOR = 1e-3  # losses are drawn on a log scale, clamped here
COLOURS = {"loss": (30, 30, 30), "tokenizer": (0, 130, 200), "slot_class": (230, 25, 75), "text": (60, 180, 75)}


def read_run(folder: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """(step -> training record, step -> eval metrics), last record per step."""
    train, evals = {}, {}
    for line in (folder / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval" in record:
            evals[record["step"]] = record["eval"]
        elif "loss" in record:
            train[record["step"]] = record
    return dict(sorted(train.items())), dict(sorted(evals.items()))


def smoothed(train: dict[int, dict], key: str, every: int) -> list[tuple[int, float]]:
    """Mean of `key` over each window of `every` steps, at the window's last step."""
    points, window = [], []
    for step, record in train.items():
        if key in record:
            window.append(record[key])
        if step % every == 0 and window:
            points.append((step, sum(window) / len(window)))
            window = []
    return points


def plot(runs: list[tuple[str, dict[int, dict]]], path: Path, every: int) -> None:
    width, height, margin = 1100, 420, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    panel = (width - 3 * margin) // len(runs)
    for index, (name, train) in enumerate(runs):
        left = margin + index * (panel + margin)
        curves = {key: smoothed(train, key, every) for key in COLOURS}
        values = [max(v, FLOOR) for c in curves.values() for _, v in c] or [1.0]
        low, top = math.log10(min(values)), math.log10(max(values))
        span = max(top - low, 1e-6)
        last = max(train) if train else 1
        draw.rectangle([left, margin, left + panel, height - margin], outline=(160, 160, 160))
        draw.text(
            (left, margin - 30), f"{name}: training losses, log scale (mean per {every} steps)", fill="black", font=font
        )
        draw.text((left, height - margin + 8), f"step 0 .. {last}", fill="black", font=font)
        draw.text((left - 44, margin), f"{10**top:.3g}", fill="black", font=font)
        draw.text((left - 44, height - margin - 10), f"{10**low:.3g}", fill="black", font=font)
        for key, points in curves.items():
            xy = [
                (left + panel * step / last, height - margin - (height - 2 * margin) * y)
                for step, value in points
                for y in [(math.log10(max(value, FLOOR)) - low) / span]
            ]
            if len(xy) > 1:
                draw.line(xy, fill=COLOURS[key], width=2)
        for j, key in enumerate(COLOURS):
            draw.text((left + panel - 90, margin + 8 + 14 * j), key, fill=COLOURS[key], font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--every", type=int, default=100, help="steps per table row / plot point")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()

    lines = ["# Training the shipped model: learning curves", ""]
    lines += [f"From `python bench/training_report.py --runs {' '.join(map(str, args.runs))}`.", ""]
    runs = []
    for folder in args.runs:
        train, evals = read_run(folder)
        runs.append((folder.name, train))
        lines += [f"## {folder.name}", "", "Training losses, mean over each window of steps:", ""]
        lines += ["| steps to | " + " | ".join(LOSSES) + " | s/step |", "|---" * (len(LOSSES) + 2) + "|"]
        columns = {key: dict(smoothed(train, key, args.every)) for key in LOSSES}
        previous_step, previous_time = 0, None
        for step in columns["loss"]:
            values = [f"{columns[k][step]:.3f}" if step in columns[k] else "" for k in LOSSES]
            elapsed = train[step].get("elapsed_s") if step in train else None
            rate = ""
            if elapsed is not None and previous_time is not None and elapsed > previous_time:
                rate = f"{(elapsed - previous_time) / (step - previous_step):.2f}"
            previous_step, previous_time = step, elapsed
            lines.append(f"| {step} | " + " | ".join(values) + f" | {rate} |")
        if evals:
            keys = sorted({k for metrics in evals.values() for k in metrics})
            lines += ["", "Evaluation during training (first val images, see the run's config):", ""]
            lines += ["| step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            for step, metrics in evals.items():
                lines.append(
                    f"| {step} | " + " | ".join(f"{metrics[k]:.3f}" if k in metrics else "" for k in keys) + " |"
                )
        lines.append("")
    if args.plot:
        plot(runs, args.plot, args.every)
        lines += [f"![learning curves]({os.path.relpath(args.plot, args.out.parent)})", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
