"""Whether contrastive denoising queries (DINO) pay for themselves in the tiny v2 object decoder on this machine.

Each variant attaches fresh decoders to the same stage-1 chat model and trains v2's detection and instance
segmentation for the same number of steps (the table gives the minutes each took), then scores box and mask AP on
the first val images. Run alone: two jobs on 2 cores starve each other.

    python bench/v2_denoising.py --init-from runs/tiny-v2-stage1/final --steps 1500
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml

from variants import run_variant, write_table

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "plain": ("two-stage query selection + box refinement (the preset)", 0),
    "denoising": ("the same + contrastive denoising, 3 groups", 3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapesworld", type=Path, default=ROOT / "data/shapesworld")
    parser.add_argument("--init-from", type=Path, default=ROOT / "runs/tiny-v2-stage1/final")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of each variant")
    parser.add_argument("--images", type=int, default=100, help="val images evaluated")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=ROOT / "runs/bench-v2-denoising")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/v2_denoising.md")
    args = parser.parse_args()
    stage = yaml.safe_load((ROOT / "configs/tiny_v2_stage2.yaml").read_text())
    rows = []
    for key in args.variants:
        name, groups = VARIANTS[key]
        run = copy.deepcopy(stage["train"])
        run.update(output_dir=str(args.work / key / "run"), init_from=str(args.init_from))
        run["data"]["root"] = str(args.shapesworld)
        run["mix"] = {"tasks": {"detection": 1.0, "instance_segmentation": 0.8}}
        model = {"objects": {"denoising_groups": groups}}
        preset = {"base": str(ROOT / "configs/tiny_v2.yaml"), "model": model, "train": run}
        rows.append(
            run_variant(
                name,
                preset,
                args.work / key,
                args.steps,
                args.shapesworld,
                ["detection", "instance_segmentation"],
                args.images,
            )
        )
    heading = [
        "# Contrastive denoising queries in the tiny v2 object decoder, for equal steps",
        "",
        f"`python bench/v2_denoising.py --steps {args.steps} --images {args.images}`: fresh decoders on the same "
        f"stage-1 chat model, detection and instance segmentation only, then box and mask AP on the first "
        f"{args.images} val images.",
    ]
    metrics = [("box AP", "box_AP", "{:.3f}"), ("AP50", "box_AP50", "{:.3f}"), ("mask AP", "mask_AP", "{:.3f}")]
    write_table(args.out, heading, metrics, rows)


if __name__ == "__main__":
    main()
