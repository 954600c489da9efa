"""Benchmark: linear probes of what VisionLLM v1's image tokens encode.

    python bench/probes.py --model checkpoints/visionllm-v1-tiny --shapesworld data/shapesworld \\
        --out docs/benchmarks/probes.md

For a caption instruction (no classes bound) the model's image-token path runs on N train and M val images.
Each image token is matched to the ground-truth object whose box overlaps its box most, if that IoU is at
least 0.5, else to the background. Multinomial logistic-regression probes, fitted on the train tokens
(full-batch L-BFGS on standardised features), then predict on the val tokens:

- colour and shape (category) of the object a matched token lies on (matched tokens only);
- object vs background (all tokens);

each from the tokenizer's embedding (`tokens.embeddings`, d_tok) and from the token in LLM space
(`image_tokens`, what the LLM reads). Chance is the val accuracy of always answering the train majority class.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from visionllm.data.sample import Sample
from visionllm.data.shapes.load import load_split
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.v1.model import VisionLLM
from visionllm.ops.tensor_boxes import cxcywh_to_xyxy, pairwise_iou

MATCH_IOU = 0.5
BACKGROUND = "background"
REPRESENTATIONS = ("tokenizer embedding", "LLM-space token")
PROBES = ("colour", "shape", "object vs background")


def image_tokens(model: VisionLLM, images: Sequence[Path]) -> tuple[Tensor, Tensor, Tensor]:
    """The model's image-token path for a caption instruction (no classes bound).

    This is the one place that calls the model; adapt it when `encode_images` changes.

    Returns:
        embeddings: (B, M, d_tok) the tokenizer's token embeddings.
        llm_tokens: (B, M, d_llm) the same tokens in LLM space.
        boxes_cxcywh: (B, M, 4) each token's box, (cx, cy, w, h) in [0, 1] of the image.
    """
    text = build_instruction(Task.CAPTION).text
    pixels = torch.stack([model.processor.image(path).pixels for path in images]).to(model.device)
    encoder = model.processor.encoder_inputs([text] * len(images), [()] * len(images))
    tokens, llm_tokens = model.encode_images(pixels, {k: v.to(model.device) for k, v in encoder.items()})
    return tokens.embeddings.float(), llm_tokens.float(), tokens.boxes.float()


@dataclass
class TokenSet:
    """Image tokens of a split with what they lie on.

    Attributes:
        features: per representation, (T, d) one row per token.
        colour, shape: per token, the matched object's colour and category, or None on the background.
        iou: (T,) each token's best IoU with a ground-truth object of its image.
        images: how many images the tokens come from.
        objects, objects_found: ground-truth objects, and those matched by at least one token.
    """

    features: dict[str, Tensor]
    colour: list[str | None]
    shape: list[str | None]
    iou: Tensor
    images: int
    objects: int
    objects_found: int

    def labels(self, probe: str) -> tuple[Tensor, list[str]]:
        """The rows (indices) and labels of a probe's tokens."""
        if probe == "object vs background":
            return torch.arange(len(self.shape)), ["object" if s is not None else BACKGROUND for s in self.shape]
        values = self.colour if probe == "colour" else self.shape
        rows = [i for i, v in enumerate(values) if v is not None]
        return torch.tensor(rows, dtype=torch.long), [values[i] for i in rows]


def collect(model: VisionLLM, samples: Sequence[Sample], batch_size: int, desc: str) -> TokenSet:
    """Runs the image-token path on `samples` and matches every token to a ground-truth object."""
    features: dict[str, list[Tensor]] = {name: [] for name in REPRESENTATIONS}
    colour: list[str | None] = []
    shape: list[str | None] = []
    ious: list[Tensor] = []
    found = 0
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, leave=False):
        chunk = samples[start : start + batch_size]
        with torch.inference_mode():
            embeddings, llm_tokens, boxes = image_tokens(model, [s.image_path for s in chunk])
        features[REPRESENTATIONS[0]].append(embeddings.flatten(0, 1).cpu())
        features[REPRESENTATIONS[1]].append(llm_tokens.flatten(0, 1).cpu())
        for sample, token_boxes in zip(chunk, boxes.cpu(), strict=True):
            width, height = _size(sample)
            if not sample.objects:
                colour += [None] * len(token_boxes)
                shape += [None] * len(token_boxes)
                ious.append(torch.zeros(len(token_boxes)))
                continue
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            objects_xyxy = torch.tensor([o.box_xyxy_px for o in sample.objects], dtype=torch.float32) / scale
            iou, _ = pairwise_iou(cxcywh_to_xyxy(token_boxes), objects_xyxy)  # (M, objects)
            best, index = iou.max(1)
            matched = best >= MATCH_IOU
            for hit, k in zip(matched.tolist(), index.tolist(), strict=True):
                colour.append(sample.objects[k].attributes.get("color") if hit else None)
                shape.append(sample.objects[k].category if hit else None)
            ious.append(best)
            found += len(set(index[matched].tolist()))
    return TokenSet(
        features={name: torch.cat(parts) for name, parts in features.items()},
        colour=colour,
        shape=shape,
        iou=torch.cat(ious),
        images=len(samples),
        objects=sum(len(s.objects) for s in samples),
        objects_found=found,
    )


def _size(sample: Sample) -> tuple[int, int]:
    if sample.width and sample.height:
        return sample.width, sample.height
    with Image.open(sample.image_path) as image:
        return image.size


def fit_probe(
    x_train: Tensor, y_train: Sequence[str], x_val: Tensor, y_val: Sequence[str], steps: int, weight_decay: float
) -> dict[str, float]:
    """Multinomial logistic regression on standardised features, full-batch L-BFGS.

    Args:
        x_train, x_val: (N, d) and (N', d) features.
        y_train, y_val: their labels; val labels never seen in train count as errors.
        steps: L-BFGS iterations.
        weight_decay: L2 penalty on the weights (mean loss + weight_decay * ||W||^2 / 2).

    Returns:
        train_accuracy, val_accuracy, and chance: the val accuracy of the train majority class.
    """
    classes = sorted(set(y_train))
    index = {c: i for i, c in enumerate(classes)}
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    a, b = (x_train - mean) / std, (x_val - mean) / std
    target = torch.tensor([index[y] for y in y_train])
    val_target = torch.tensor([index.get(y, -1) for y in y_val])
    weight = torch.zeros(a.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(a @ weight + bias, target) + weight_decay / 2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        train_accuracy = ((a @ weight + bias).argmax(1) == target).float().mean().item()
        val_accuracy = ((b @ weight + bias).argmax(1) == val_target).float().mean().item()
    majority = Counter(y_train).most_common(1)[0][0]
    chance = sum(y == majority for y in y_val) / len(y_val)
    return {"train_accuracy": train_accuracy, "val_accuracy": val_accuracy, "chance": chance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("checkpoints/visionllm-v1-tiny"), help="checkpoint folder")
    parser.add_argument("--shapesworld", type=Path, required=True, help="a ShapesWorld folder with train and val")
    parser.add_argument("--train", type=int, default=400, help="train images (default 400)")
    parser.add_argument("--val", type=int, default=200, help="val images (default 200)")
    parser.add_argument("--steps", type=int, default=300, help="L-BFGS iterations per probe (default 300)")
    parser.add_argument("--weight-decay", type=float, default=1e-3, help="L2 penalty of the probes (default 1e-3)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/probes.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    model = VisionLLM.from_pretrained(args.model).eval()
    train = collect(
        model, load_split(args.shapesworld, "train", Task.DETECTION)[: args.train], args.batch_size, "train"
    )
    val = collect(model, load_split(args.shapesworld, "val", Task.DETECTION)[: args.val], args.batch_size, "val")

    rows = []
    for probe in PROBES:
        train_rows, train_labels = train.labels(probe)
        val_rows, val_labels = val.labels(probe)
        for representation in REPRESENTATIONS:
            scores = fit_probe(
                train.features[representation][train_rows],
                train_labels,
                val.features[representation][val_rows],
                val_labels,
                args.steps,
                args.weight_decay,
            )
            rows.append(
                {
                    "probe": probe,
                    "representation": representation,
                    "dim": train.features[representation].shape[1],
                    "classes": len(set(train_labels)),
                    "train_tokens": len(train_labels),
                    "val_tokens": len(val_labels),
                    **scores,
                }
            )
    seconds = time.perf_counter() - started

    matching = [
        {
            "split": name,
            "images": s.images,
            "tokens": len(s.shape),
            "matched_tokens": sum(v is not None for v in s.shape),
            "objects": s.objects,
            "objects_matched": s.objects_found,
            "mean_best_iou": s.iou.mean().item(),
        }
        for name, s in (("train", train), ("val", val))
    ]
    lines = [
        "# What v1's image tokens encode: linear probes",
        "",
        f"Checkpoint `{args.model}`, ShapesWorld `{args.shapesworld}`: {train.images} train / {val.images} val "
        f"images, caption instruction (no classes bound), {len(val.shape) // val.images} image tokens per image. "
        f"A token lies on the ground-truth object its box overlaps most if that IoU is >= {MATCH_IOU}, else on the "
        f"background. Multinomial logistic regression on standardised features ({args.steps} full-batch L-BFGS "
        f"iterations, L2 {args.weight_decay}), fitted on train tokens, accuracy on val tokens; chance is the val "
        "accuracy of the train majority class. Produced by `python bench/probes.py` "
        f"({platform.machine()}, {torch.get_num_threads()} threads, {seconds:.0f} s).",
        "",
        "| probe | representation | dim | classes | train / val tokens | val accuracy | chance | train accuracy |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['probe']} | {r['representation']} | {r['dim']} | {r['classes']} | "
            f"{r['train_tokens']} / {r['val_tokens']} | {r['val_accuracy']:.3f} | {r['chance']:.3f} | "
            f"{r['train_accuracy']:.3f} |"
            for r in rows
        ),
        "",
        "Token-object matching:",
        "",
        "| split | images | tokens | tokens on an object | objects | objects with a token | mean best IoU |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {m['split']} | {m['images']} | {m['tokens']} | {m['matched_tokens']} | {m['objects']} | "
            f"{m['objects_matched']} | {m['mean_best_iou']:.3f} |"
            for m in matching
        ),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps({"probes": rows, "matching": matching}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
