"""Measurement: the LLM's slots against their own tokenizer, and what duplicate detections cost.

    python bench/duplicates.py --model checkpoints/visionllm-v1-tiny --shapesworld data/shapesworld \
        --out docs/benchmarks/duplicates.md

Slots are decoded independently, so several can land on one object. This runs detection on the val split
once, then scores the same predictions as they are and after class-wise non-maximum suppression at a few IoU
thresholds (`visionllm.ops.boxes.nms`, also the model's `decoder.nms_iou` option). The image tokenizer's own
detections (each token's box and best class, scored by its sigmoid probability) are scored the same way: the
slots should be no worse than the tokenizer they read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from visionllm.eval.runner import evaluate_shapesworld
from visionllm.formats.results import Decoded, Detections
from visionllm.models.v1.model import VisionLLM
from visionllm.ops.boxes import nms
from visionllm.ops.tensor_boxes import cxcywh_to_xyxy


class Recorded:
    """Runs the model once and remembers its answers, in call order."""

    def __init__(self, model: VisionLLM) -> None:
        self.model, self.config, self.answers = model, model.config, []

    def predict(self, images, instructions, min_score=0.05):
        answers = self.model.predict(images, instructions, min_score=min_score)
        self.answers.append(answers)
        return answers


class TokenizerDetector:
    """The image tokenizer as a detector: each token's box and its best bound class."""

    def __init__(self, model: VisionLLM) -> None:
        self.model, self.config = model, model.config

    @torch.no_grad()
    def predict(self, images, instructions, min_score=0.05):
        model = self.model.eval()
        inputs = [model.processor.image(im) for im in images]
        texts = [i.text for i in instructions]
        classes = [i.class_names for i in instructions]
        encoder = model.processor.encoder_inputs(texts, classes)
        tokens = model.tokenize(torch.stack([im.pixels for im in inputs]), encoder)
        probs = tokens.class_logits.float().sigmoid() * tokens.valid[:, None, :]
        answers = []
        for b, image in enumerate(inputs):
            scores, best = probs[b, :, : len(classes[b])].max(-1)
            keep = (scores >= min_score).numpy()
            w, h = image.size_wh
            boxes = cxcywh_to_xyxy(tokens.boxes[b].float()).clamp(0, 1) * torch.tensor([w, h, w, h])
            boxes = boxes.numpy()[keep]
            names = tuple(classes[b][int(i)] for i in best.numpy()[keep])
            answers.append(Decoded(Detections(boxes, scores.numpy()[keep], names), ()))
        return answers


class Replayed:
    """Replays recorded answers, with class-wise NMS at `iou` applied to each."""

    def __init__(self, recorded: Recorded, iou: float) -> None:
        self.config, self.iou, self.calls = recorded.config, iou, iter(recorded.answers)

    def predict(self, images, instructions, min_score=0.05):
        return [self._suppress(answer) for answer in next(self.calls)]

    def _suppress(self, answer: Decoded) -> Decoded:
        found = answer.prediction
        if not isinstance(found, Detections) or len(found) < 2:
            return answer
        keep = nms(found.boxes_xyxy_px, found.scores, self.iou, labels=np.array(found.class_names))
        return Decoded(found.select(keep), answer.dropped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("checkpoints/visionllm-v1-tiny"))
    parser.add_argument("--shapesworld", type=Path, default=Path("data/shapesworld"))
    parser.add_argument("--limit", type=int, help="first N val images only")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    model = VisionLLM.from_pretrained(args.model)
    rows = []
    for source, predictor in (("LLM slots", Recorded(model)), ("tokenizer", Recorded(TokenizerDetector(model)))):
        metrics = evaluate_shapesworld(predictor, args.shapesworld, tasks=["detection"], limit=args.limit)
        rows.append((source, "none", metrics))
        for iou in (0.7, 0.5, 0.3):
            replay = Replayed(predictor, iou)
            metrics = evaluate_shapesworld(
                replay, args.shapesworld, tasks=["detection"], limit=args.limit, progress=False
            )
            rows.append((source, f"class-wise NMS, IoU > {iou}", metrics))
    images = args.limit or "all"
    lines = [
        "# The slots against their tokenizer, and what duplicate detections cost",
        "",
        f"Command: `python bench/duplicates.py --model {args.model} --shapesworld {args.shapesworld}"
        + (f" --limit {args.limit}`" if args.limit else "`"),
        "",
        f"Detection on ShapesWorld val ({images} images), one model pass; the same predictions scored as they are",
        "and after class-wise non-maximum suppression; the image tokenizer's own detections likewise.",
        "",
        "| detections | post-processing | box AP | AP50 | AP75 |",
        "|---|---|---|---|---|",
    ]
    for source, name, m in rows:
        lines.append(f"| {source} | {name} | {m['box_AP']:.3f} | {m['box_AP50']:.3f} | {m['box_AP75']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
