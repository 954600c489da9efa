"""Which vision encoder the tiny v2 preset should use: the CLIP-layout transformer or a convolutional backbone,
from scratch or started from the shipped v1 model's trained ResNet (`vision.init_backbone`), with and without the
patch labels (`visionllm.models.v2.patch_labels`).

Each variant trains v2's stage 1 (the chat model: chat, VQA, captions, region captions) for the same number of
steps on the same data (the table gives the minutes each took), then answers the first val images' VQA questions,
captions and region captions, the first two also with each image swapped for another (the blind control). Run
alone: two jobs on 2 cores starve each other.

    python bench/v2_vision.py --shapesworld data/shapesworld --steps 1000 --out docs/benchmarks/v2_vision_runs.md
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml

from variants import run_variant, write_table

ROOT = Path(__file__).resolve().parents[1]
RESNET = {"kind": "resnet", "embedding_size": 32, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 2, 1]}
RESNET["layer_type"] = "basic"
NONE = {"patch_labels": None}  # the preset's patch labels left out
VIT = {"backbone": None, "init_backbone": None, "num_layers": 4, "num_heads": 3, "intermediate_size": 768}
SCRATCH = {"backbone": RESNET, "init_backbone": None}
V1 = {"backbone": RESNET, "init_backbone": str(ROOT / "checkpoints/visionllm-v1-tiny")}
VARIANTS = {
    "vit": ("CLIP-layout ViT (4 x 192, 16 px patches)", {"vision": VIT, **NONE}),
    "vit+labels": ("the same ViT with patch labels", {"vision": VIT}),
    "resnet": ("ResNet (v1's tiny layout) at strides 8-32, 192 wide", {"vision": SCRATCH, **NONE}),
    "resnet+labels": ("the same ResNet with patch labels", {"vision": SCRATCH}),
    "resnet-v1+labels": ("the same ResNet started from the v1 model's, with patch labels", {"vision": V1}),
}


TASKS = ["caption", "vqa", "region_caption"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapesworld", type=Path, default=ROOT / "data/shapesworld")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each variant")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--images", type=int, default=100, help="val images evaluated")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/bench-v2-vision")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/v2_vision_runs.md")
    args = parser.parse_args()
    stage = yaml.safe_load((ROOT / "configs/tiny_v2_stage1.yaml").read_text())
    base = str(ROOT / "configs/tiny_v2.yaml")  # the variant's model: the preset's, refined by stage 1's and its own
    rows = []
    for key in args.variants:
        name, override = VARIANTS[key]
        run = copy.deepcopy(stage["train"]) | {"output_dir": str(args.work / key / "run")}
        run["data"]["root"] = str(args.shapesworld)
        preset = {"base": base, "model": {**stage["model"], **override}, "train": run}
        rows.append(run_variant(name, preset, args.work / key, args.steps, args.shapesworld, TASKS, args.images))
    heading = [
        "# The tiny v2 chat model's vision encoder, for equal CPU time",
        "",
        f"`python bench/v2_vision.py --steps {args.steps} --images {args.images}`: v2's stage 1 for each encoder, "
        f"then VQA, captions and region captions on the first {args.images} val images, the first two also with each "
        "image swapped for another (blind).",
    ]
    vqa = [("vqa_accuracy", "vqa_accuracy", "{:.3f}"), ("blind", "vqa_accuracy_blind", "{:.3f}")]
    captions = [("CIDEr", "CIDEr", "{:.3f}"), ("blind", "CIDEr_blind", "{:.3f}")]
    regions = [("region caption", "region_caption_accuracy", "{:.3f}")]
    write_table(args.out, heading, [*vqa, *captions, *regions], rows)


if __name__ == "__main__":
    main()
