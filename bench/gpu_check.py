"""GPU check: the tiny presets train for a few minutes, and the paper presets (random weights) run a forward at
batch 1 and 8 in bf16; throughput and peak memory printed as one JSON line per measurement, and a table at the end.

    bash bench/gpu_check.sh            # on a CUDA machine with the project installed (make setup)
    python bench/gpu_check.py --quick  # the same steps at toy sizes, on any device (what the tests run)

Installs nothing. Data: a small ShapesWorld set generated under --work. Paper presets start from random weights
(speed and memory do not depend on them); the v1 paper preset's LLaMA-7B is built with LoRA as configured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from visionllm.data.shapes.dataset import generate_shapesworld
from visionllm.data.shapes.scene import ShapesWorldConfig
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.loading import MODEL_CLASSES
from visionllm.models.memory import with_vocabulary
from visionllm.train.loop import load_run_config, run_stage

ROOT = Path(__file__).resolve().parent.parent


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None


def _report(rows: list[dict], **row) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def train_tiny(preset: Path, work: Path, minutes: float, steps: int | None, rows: list[dict]) -> None:
    """A tiny preset's stage for `minutes` (or `steps`): training images per second."""
    model_config, config = load_run_config(preset)
    config.output_dir = str(work / f"run-{preset.stem}")
    config.data.root = str(work / "shapesworld")
    config.init_from = None
    config.eval_every = 0
    config.save_every = 10**9
    config.max_minutes = minutes
    config.max_steps = steps or 10**8
    if not torch.cuda.is_available():
        config.mixed_precision = "no"
    started = time.perf_counter()
    run_stage(model_config, config)
    log = [json.loads(line) for line in (Path(config.output_dir) / "log.jsonl").read_text().splitlines()]
    done = [r for r in log if "loss" in r]
    seconds = time.perf_counter() - started
    _report(
        rows, kind="train", preset=preset.name, steps=done[-1]["step"], loss=done[-1]["loss"],
        images_per_s=round(done[-1]["step"] * config.batch_size / max(seconds, 1e-9), 1),
    )  # fmt: skip


@torch.no_grad()
def forward(preset: Path, batches: list[int], device: torch.device, rows: list[dict], size: dict | None) -> None:
    """A paper preset's (random) model: detection answers per batch size, in bf16 on a GPU, images per second and
    peak memory."""
    model_config, _ = load_run_config(preset)
    if size:  # --quick: the same code at toy sizes
        model_config = type(model_config).from_dict({**model_config.to_dict(), **size})
    model_config = with_vocabulary(model_config)
    model_class = MODEL_CLASSES[model_config.model_type]
    started = time.perf_counter()
    model = model_class(model_config, load_weights=False).to(device, torch.bfloat16 if device.type == "cuda" else None)
    model.eval()
    built = time.perf_counter() - started
    for batch_size in batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        side = _image_size(model_config)
        images = [torch.randint(0, 255, (side, side, 3)).numpy().astype("uint8")] * batch_size
        instruction = build_instruction(Task.DETECTION, classes=["red circle", "person"], config=model.config.codec())
        model.predict(images, [instruction] * batch_size)  # warm-up
        timed = time.perf_counter()
        model.predict(images, [instruction] * batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - timed
        _report(
            rows, kind="predict", preset=preset.name, batch=batch_size, build_s=round(built, 1),
            images_per_s=round(batch_size / seconds, 2), peak_gib=_peak_gib(device),
            parameters=sum(p.numel() for p in model.parameters()),
        )  # fmt: skip
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _image_size(model_config) -> int:
    vision = getattr(model_config, "vision", None)
    return vision.image_size if vision is not None else model_config.image_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training minutes per tiny preset (default 2)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="toy sizes and a few steps (a check of the script)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps({"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}), flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        generate_shapesworld(work / "shapesworld", 64 if args.quick else 2000, 8, ShapesWorldConfig(), progress=False)
        stages = ["tiny_stage1.yaml", "tiny_stage2.yaml", "tiny_v2_stage1.yaml"]
        for name in stages[:1] if args.quick else stages:
            train_tiny(ROOT / "configs" / name, work, args.minutes, 2 if args.quick else None, rows)
        # toy sizes of the paper presets for --quick: the code path without the 7B weights
        toy = {"image_size": 128, "llm": {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                                          "intermediate_size": 128}}  # fmt: skip
        for name in ("paper.yaml",) if args.quick else ("paper.yaml", "paper_v2.yaml"):
            batches = [1, 2] if args.quick else [1, 8]
            forward(ROOT / "configs" / name, batches, device, rows, toy if args.quick else None)
    print("\n" + "\n".join(json.dumps(r) for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
