"""What more training buys the tiny v2 decoders, and which way of spending it pays most.

Each variant continues from one checkpoint (the shipped model by default) for the same number of steps: stage 3
(the chat model frozen, the decoders learning), plain or with contrastive denoising queries, with the object,
prompted or keypoint tasks weighted up, with phrase separation, or with the object decoder started afresh from the
v1 model's trained detector; or stage 2 again (the chat model learning too). Every `--every` steps a checkpoint
is kept; each is then scored on the first `--images` val images, so the table is a learning curve per variant.
On 2 cores run the variants one at a time; on a machine with more cores or a GPU, one process per variant
(`--variants NAME`), then `--eval-only` once they have all stopped (a run stopped by SIGTERM keeps a checkpoint,
and its curve ends there).

    python bench/v2_continue.py --variants stage3 --steps 5000
    python bench/v2_continue.py --eval-only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from variants import write_table
from visionllm.eval.runner import evaluate_shapesworld
from visionllm.models.loading import load_pretrained
from visionllm.train.loop import TrainingInterrupted, train

ROOT = Path(__file__).resolve().parents[1]
OBJECTS = {"detection": 2.0, "instance_segmentation": 1.2, "semantic_segmentation": 0.3, "grounding": 0.6}
PROMPTS = {"detection": 1.0, "instance_segmentation": 0.8, "semantic_segmentation": 0.3, "grounding": 1.2}
PLAIN = {"objects": {"phrase_separation": 0.0, "init_detector": None}}
V1 = str(ROOT / "checkpoints/visionllm-v1-tiny")
VARIANTS = {
    "stage3": ("stage 3 as the preset runs it (chat model frozen), lr 2e-4", PLAIN, {}),
    "denoising": (
        "stage 3 + contrastive denoising, 3 groups",
        {"objects": {**PLAIN["objects"], "denoising_groups": 3}},
        {},
    ),
    "objects": (
        "stage 3, detection and instance segmentation weighted up, lr 4e-4",
        PLAIN,
        {
            "mix": {"tasks": {**OBJECTS, "interactive_segmentation": 0.6, "keypoints": 0.6}},
            "optim": {"lr": 4e-4},
        },
    ),
    "prompts": (
        "stage 3, interactive segmentation and grounding weighted up",
        PLAIN,
        {"mix": {"tasks": {**PROMPTS, "interactive_segmentation": 2.0, "keypoints": 0.6}}},
    ),
    "keypoints": (
        "stage 3, keypoints weighted up",
        PLAIN,
        {"mix": {"tasks": {**PROMPTS, "grounding": 0.6, "interactive_segmentation": 0.6, "keypoints": 1.5}}},
    ),
    "stage2": (
        "stage 2 again (the chat model learns too), lr 1e-4",
        PLAIN,
        {"stage": "stage2", "optim": {"lr": 1e-4}},
    ),
    "separation": (
        "stage 3 + phrase separation (weight 1)",
        {"objects": {"phrase_separation": 1.0, "init_detector": None}},
        {},
    ),
    "detector": (
        "stage 3 with the object decoder started afresh from the v1 model's detector + phrase separation",
        {"objects": {"phrase_separation": 1.0, "init_detector": V1}},
        {"fresh_decoder": True},
    ),
}
TASKS = ["detection", "instance_segmentation", "keypoints", "interactive_segmentation", "grounding"]


def preset(key: str, args: argparse.Namespace) -> dict:
    """The preset file of a variant: the stage's run with the variant's changes, from `--init-from` (without its
    object decoder for a variant that starts it afresh)."""
    _, model, changes = VARIANTS[key]
    changes = copy.deepcopy(changes)
    stage = yaml.safe_load((ROOT / f"configs/tiny_v2_{changes.pop('stage', 'stage3')}.yaml").read_text())
    start = without_decoder(args.init_from, args.work) if changes.pop("fresh_decoder", False) else args.init_from
    run = stage["train"]
    run.update(output_dir=str(args.work / key), init_from=str(start), max_steps=args.steps)
    run.update(save_every=args.every, keep_checkpoints=args.steps // args.every + 1, eval_every=0)
    run["data"]["root"] = str(args.shapesworld)
    for name, value in changes.items():
        run[name] = {**run.get(name, {}), **value}
    return {"base": str(ROOT / "configs/tiny_v2.yaml"), "model": copy.deepcopy(model), "train": run}


def without_decoder(folder: Path, work: Path) -> Path:
    """A copy of checkpoint `folder` without its object decoder's weights (the keypoint decoder kept)."""
    out = work / "start-without-decoder"
    out.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(folder / "model.safetensors"))
    kept = {name: tensor for name, tensor in weights.items() if not name.startswith("object_decoder.")}
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(folder / "config.json", out / "config.json")
    shutil.copytree(folder / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    return out


def run(key: str, args: argparse.Namespace) -> None:
    """Train one variant in its folder (resuming what is there)."""
    folder = args.work / key
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "preset.yaml"
    path.write_text(yaml.safe_dump(preset(key, args)))
    try:
        train(path, resume=True)
    except TrainingInterrupted as stopped:
        print(f"{key}: stopped at step {stopped.step}")


def curve(key: str, args: argparse.Namespace, tasks: list[str]) -> list[dict]:
    """The variant's rows: each kept checkpoint scored on the val images."""
    kept = sorted((args.work / key / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    rows = []
    for folder in kept:
        metrics = score(folder, args, tasks)
        row = {"variant": key, "steps": int(folder.name.split("-")[1]), "minutes": _minutes(args.work / key), **metrics}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def score(folder: Path, args: argparse.Namespace, tasks: list[str]) -> dict[str, float]:
    """A checkpoint's metrics on the val images, on `--device` (on the CPU if that fails, saying why)."""
    model = load_pretrained(folder)
    try:
        model = model.to(args.device)
    except RuntimeError as error:
        if args.device == "cpu":
            raise
        print(f"{folder}: scoring on {args.device} failed ({error}); scoring on the CPU", flush=True)
        model = model.cpu()
    return evaluate_shapesworld(model, args.shapesworld, "val", tasks, args.images, progress=False, controls=False)


def _minutes(folder: Path) -> float:
    """The run's training minutes so far, from its log."""
    lines = (folder / "log.jsonl").read_text().splitlines() if (folder / "log.jsonl").exists() else []
    elapsed = [json.loads(line).get("elapsed_s", 0) for line in lines]
    return round(max(elapsed, default=0) / 60, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapesworld", type=Path, default=ROOT / "data/shapesworld")
    parser.add_argument("--init-from", type=Path, default=ROOT / "checkpoints/visionllm-v2-tiny")
    parser.add_argument("--steps", type=int, default=5000, help="training steps of each variant")
    parser.add_argument("--every", type=int, default=1000, help="steps between the scored checkpoints")
    parser.add_argument("--images", type=int, default=200, help="val images scored")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--device", default="cpu", help="where the checkpoints are scored (cpu, cuda)")
    parser.add_argument("--eval-only", action="store_true", help="score the runs in --work and write the table")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/bench-v2-continue")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/v2_continue.md")
    args = parser.parse_args()
    if not args.eval_only:
        for key in args.variants:
            run(key, args)
    rows = []
    for key in args.variants:
        tasks = [*TASKS, "region_caption", "vqa"] if key == "stage2" else TASKS
        rows += curve(key, args, tasks)
    start = score(args.init_from, args, TASKS)
    rows.insert(0, {"variant": "start", "steps": 0, "minutes": 0.0, **start})
    heading = [
        "# What more training buys the tiny v2 decoders",
        "",
        f"`python bench/v2_continue.py --steps {args.steps} --every {args.every} --images {args.images}`, from "
        f"{args.init_from.name}; scored on the first {args.images} val images. Variants: "
        + "; ".join(f"{k}: {VARIANTS[k][0]}" for k in args.variants)
        + f". Threads: {os.environ.get('OMP_NUM_THREADS', 'all')}.",
    ]
    columns = [
        ("box AP", "box_AP", "{:.3f}"),
        ("AP50", "box_AP50", "{:.3f}"),
        ("mask AP", "mask_AP", "{:.3f}"),
        ("keypoint AP", "keypoint_AP", "{:.3f}"),
        ("interactive mIoU", "interactive_mIoU", "{:.3f}"),
        ("grounding P@0.5", "grounding_P@0.5", "{:.3f}"),
        ("region caption", "region_caption_accuracy", "{:.3f}"),
        ("VQA", "vqa_accuracy", "{:.3f}"),
    ]
    write_table(args.out, heading, columns, rows)


if __name__ == "__main__":
    main()
