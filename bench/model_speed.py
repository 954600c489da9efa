"""Benchmark: VisionLLM v1 speed on this machine (training step and inference per task).

    python bench/model_speed.py --config configs/tiny.yaml --out docs/benchmarks/model_speed.md

The model is built from the preset (random LLM weights: speed does not depend on them, except that
a trained model stops text answers earlier).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from visionllm.config import VisionLLMConfig, load_yaml
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.v1.batch import Example, collate
from visionllm.models.v1.model import VisionLLM
from visionllm.models.v1.processor import codec_config


def _examples(model: VisionLLM, count: int) -> list[Example]:
    codec = codec_config(model.config)
    instruction = build_instruction(Task.DETECTION, classes=["circle", "square", "star"], config=codec)
    image = model.processor.image(np.zeros((model.config.image_size,) * 2 + (3,), np.uint8))
    boxes = np.array([[10.0, 10.0, 40.0, 40.0], [50.0, 60.0, 90.0, 100.0]])
    return [
        Example(image, instruction.text, Task.DETECTION, instruction.output_format, instruction.class_names,
                class_index=np.array([0, 2]), points_xy_px=boxes.reshape(2, 2, 2), visible=np.ones((2, 2), bool),
                token_boxes_xyxy_px=boxes)
        for _ in range(count)
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/tiny.yaml"))
    parser.add_argument("--model", type=Path, help="a checkpoint folder instead of a fresh model")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/model_speed.md"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model:
        model = VisionLLM.from_pretrained(args.model)
    else:
        model = VisionLLM(VisionLLMConfig.from_dict(load_yaml(args.config)["model"]))
    rows = []
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = collate(_examples(model, 16), model.processor)
    for precision in ("bf16", "fp32"):
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
        step = min(times[1:])
        rows.append(
            {"what": f"training step, detection, batch 16, {precision}", "seconds": step, "images_per_s": 16 / step}
        )
    model.eval()
    codec = codec_config(model.config)
    image = np.zeros((model.config.image_size,) * 2 + (3,), np.uint8)
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
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                model.predict([image] * batch_size, [instruction] * batch_size)
                times.append(time.perf_counter() - start)
            t = min(times[1:])
            rows.append({"what": f"predict {name}, batch {batch_size}", "seconds": t, "images_per_s": batch_size / t})
    lines = [
        "# VisionLLM v1 speed",
        "",
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{'checkpoint ' + str(args.model) if args.model else 'preset ' + str(args.config)}, best of {args.repeats}. "
        "Produced by `python bench/model_speed.py`.",
        "",
        "| what | seconds | images/s |",
        "|---|---|---|",
        *(f"| {r['what']} | {r['seconds']:.3f} | {r['images_per_s']:.1f} |" for r in rows),
        "",
        "Text answers of an untrained model run to `max_new_tokens`; a trained one stops at its end token.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
