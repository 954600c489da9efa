"""Benchmark: VisionLLM v1 speed on this machine: training images/s of both stages, before and after, in one run,
and inference per task.

    python bench/model_speed.py --out docs/benchmarks/model_speed.md

"Before" is the tiny preset and its two stage files as first shipped (bench/baseline/), "after" the current
presets (configs/tiny_stage1.yaml, configs/tiny_stage2.yaml); both run on today's code, with their own data
stream (task mix, one task per batch or not, freezing, tokenizer-only stage), on the same ShapesWorld images.
A step is timed whole: data, collation, forward, backward, clipping and the optimiser. Models start from random
weights (speed does not depend on them, except that a trained model stops text answers earlier).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from visionllm.data.shapes.dataset import generate_shapesworld
from visionllm.data.shapes.scene import ShapesWorldConfig
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.v1.batch import collate
from visionllm.models.v1.data import TaskMixture
from visionllm.models.v1.model import VisionLLM
from visionllm.train.loop import load_run_config
from visionllm.train.mix import MixConfig

ROOT = Path(__file__).resolve().parent.parent
STAGES = {
    "before": (ROOT / "bench/baseline/tiny_stage1.yaml", ROOT / "bench/baseline/tiny_stage2.yaml"),
    "after": (ROOT / "configs/tiny_stage1.yaml", ROOT / "configs/tiny_stage2.yaml"),
}


def training_rate(config_path: Path, data_root: Path, steps: int, warmup: int = 2) -> dict:
    """Mean seconds per step and images/s of a stage's training step, and its mean LLM sequence length.

    A stage whose batches hold one task (`mix.task_per_batch`) is timed task by task (and point count by point
    count), `steps` steps each, and the per-task times are weighted by the mix: the expected step of the whole
    schedule, not of the few tasks a short run happens to draw. Mixed batches are timed as drawn, 3 x `steps`.
    """
    model_config, train = load_run_config(config_path)
    torch.manual_seed(0)
    model = VisionLLM(model_config).train()
    model.freeze(train.frozen_groups)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def timed(mix: MixConfig, count: int) -> tuple[float, float]:
        stream = TaskMixture(
            data_root, "train", model.processor, mix, seed=1, batch_size=train.batch_size,
            default_classes=model_config.tokenizer.default_classes,
        )  # fmt: skip
        times, lengths = [], []
        for step in range(warmup + count):
            start = time.perf_counter()
            batch = collate([stream[step * train.batch_size + j] for j in range(train.batch_size)], model.processor)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=train.mixed_precision == "bf16"):
                loss = model(batch, tokenizer_only=train.tokenizer_only)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= warmup:
                times.append(time.perf_counter() - start)
                lengths.append(batch.input_ids.shape[1])
        return statistics.mean(times), statistics.mean(lengths)

    by_task = []
    if train.mix.task_per_batch:
        total = sum(w for w in train.mix.tasks.values() if w > 0)
        for task, weight in train.mix.tasks.items():
            if weight <= 0:
                continue
            counts = train.mix.polygon_points if task == Task.INSTANCE_SEGMENTATION.value else [None]
            for points in counts:
                mix = replace(
                    train.mix, tasks={task: 1.0}, polygon_points=[points] if points else train.mix.polygon_points
                )
                seconds, length = timed(mix, steps)
                name = f"{task}, {points} points" if points else task
                by_task.append(
                    {"task": name, "share": weight / total / len(counts), "seconds": seconds, "llm_tokens": length}
                )
        seconds = sum(r["share"] * r["seconds"] for r in by_task)
        length = sum(r["share"] * r["llm_tokens"] for r in by_task)
    else:
        seconds, length = timed(train.mix, 3 * steps)
    return {
        "seconds": seconds,
        "images_per_s": train.batch_size / seconds,
        "llm_tokens": 0 if train.tokenizer_only else length,
        "vocabulary": len(model.processor.tokenizer),
        "by_task": by_task,
    }


def inference_rows(model: VisionLLM, repeats: int) -> list[dict]:
    codec = model.config.codec()
    image = np.zeros((model.config.image_size,) * 2 + (3,), np.uint8)
    rows = []
    for name, instruction in (
        ("detection", build_instruction(Task.DETECTION, classes=["circle", "square", "star"], config=codec)),
        (
            "segmentation, 16 points",
            build_instruction(Task.INSTANCE_SEGMENTATION, classes=["circle"], num_points=16, config=codec),
        ),
        ("caption", build_instruction(Task.CAPTION)),
    ):
        for batch_size in (1, 8):
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                model.predict([image] * batch_size, [instruction] * batch_size)
                times.append(time.perf_counter() - start)
            t = min(times[1:])
            rows.append({"what": f"predict {name}, batch {batch_size}", "seconds": t, "images_per_s": batch_size / t})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a checkpoint folder for the inference rows (default: the preset)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/model_speed.md"))
    parser.add_argument(
        "--steps", type=int, default=4, help="timed steps per task (one-task batches) or a third of the steps (mixed)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="inference repeats (best of)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_root = generate_shapesworld(
            Path(tmp) / "w", train=400, val=0, config=ShapesWorldConfig(image_size=128), seed=5, progress=False
        ).root
        training = {
            (version, stage + 1): training_rate(path, data_root, args.steps)
            for version, paths in STAGES.items()
            for stage, path in enumerate(paths)
        }
    model = VisionLLM.from_pretrained(args.model) if args.model else VisionLLM(load_run_config(STAGES["after"][1])[0])
    inference = inference_rows(model.eval(), args.repeats)
    lines = [
        "# VisionLLM v1 speed",
        "",
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
        "Produced by `python bench/model_speed.py`.",
        "",
        "## Training, batch 16, bf16: the presets as first shipped (before) and now (after), in one run",
        "",
        "Steps timed whole (data, collation, forward, backward, clipping, AdamW) after 2 warm-up steps, on the same "
        "400 generated ShapesWorld images.",
        "",
        "| stage | version | s/step | images/s | LLM tokens per sample | LLM vocabulary | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in (1, 2):
        before = training[("before", stage)]
        for version in ("before", "after"):
            r = training[(version, stage)]
            ratio = r["images_per_s"] / before["images_per_s"]
            lines.append(
                f"| {stage} | {version} | {r['seconds']:.3f} | {r['images_per_s']:.1f} | {r['llm_tokens']:.0f} "
                f"| {r['vocabulary']} | {ratio:.2f}x |"
            )
    lines += [
        "",
        "Stage 1 after trains the image tokenizer alone (no LLM pass, `tokenizer_only`); before, it also ran the LLM.",
        "Stages whose batches hold one task are timed task by task and weighted by their mix (below); mixed batches "
        f"are timed as drawn ({3 * args.steps} steps).",
        "",
        "| stage | task (after) | share of steps | s/step | LLM tokens per sample |",
        "|---|---|---|---|---|",
        *(
            f"| {stage} | {r['task']} | {r['share']:.2f} | {r['seconds']:.3f} | {r['llm_tokens']:.0f} |"
            for stage in (1, 2)
            for r in training[("after", stage)]["by_task"]
        ),
        "",
        f"## Inference ({'checkpoint ' + str(args.model) if args.model else 'the current preset'}, best of "
        f"{args.repeats})",
        "",
        "| what | seconds | images/s |",
        "|---|---|---|",
        *(f"| {r['what']} | {r['seconds']:.3f} | {r['images_per_s']:.1f} |" for r in inference),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    record = {
        "training": [{"version": v, "stage": s, **r} for (v, s), r in training.items()],
        "inference": inference,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
