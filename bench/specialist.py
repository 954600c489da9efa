"""Generalist vs specialist at equal compute: a plain slot detector against VisionLLM v1's detection curve.

    python bench/specialist.py --shapesworld data/shapesworld --runs runs/tiny-stage1 runs/tiny-stage2 \
        --out docs/benchmarks/specialist.md

"Equal compute" here means equal training time on this machine (wall-clock seconds of training on the same CPU
cores, bf16 autocast, evaluation time left out on both sides), counted against what the generalist spent on
detection:

- all of stage 1: the image tokenizer trains alone as an open-vocabulary detector (L_tok, no LLM pass); every
  step is detection-type, whatever task its classes came from;
- the detection share of stage 2: the stage-2 training seconds up to a step, times the weight of detection in
  the stage-2 task mix over the sum of the weights (the run's train_config.json, else configs/tiny_stage2.yaml).
  Each batch is one task, so this is the share of steps; detection steps need not cost the average step.

The generalist's representation also learns from its other tasks, and the specialist has none of them: this
measures what the generalist's detection costs against a model that only detects, not which one is better.

The specialist is the detector the notes (notes/cpu-training.md) found most sample-efficient on this machine: the
generalist's backbone (same `BackboneConfig`, from scratch), its stride-16 and stride-32 maps projected to 256
channels with a 2-D sine position embedding, a 2 + 2 layer transformer, 30 learned queries, and per query class
logits (the ShapesWorld categories + no-object) and four distributions over 2R + 1 bins of x1, y1, x2, y2 in [0, 1],
trained with Hungarian matching. It is evaluated every `--eval-every-min` minutes of training time on the first
`--eval-images` val images by the project's standard runner, as the generalist is during stage 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from visionllm.config import BackboneConfig, VisionLLMConfig
from visionllm.data.sample import Sample
from visionllm.data.shapes.dataset import ShapesWorldLayout
from visionllm.data.shapes.load import load_split
from visionllm.eval.runner import evaluate_shapesworld
from visionllm.formats.results import Decoded, Detections
from visionllm.formats.task_table import Instruction
from visionllm.formats.tasks import Task
from visionllm.models.common.backbone import Backbone, sine_position_2d
from visionllm.models.common.inputs import normalise_image
from visionllm.models.common.matcher import hungarian_match
from visionllm.models.v1.decoder import two_bin_targets
from visionllm.ops.tensor_boxes import elementwise_generalized_iou, generalized_iou
from visionllm.train.loop import load_run_config

logger = logging.getLogger("specialist")

NO_OBJECT_WEIGHT = 0.1
L1_WEIGHT, GIOU_WEIGHT = 5.0, 2.0


# -- the specialist ----------------------------------------------------------------------------------------------


class SlotDetector(nn.Module):
    """Parallel queries over coordinate bins (DETR with binned absolute corners).

    Input: (B, 3, S, S) normalised RGB. Output: class logits (B, Q, C + 1), the last one no-object, and coordinate
    logits (B, Q, 4, bins) over x1, y1, x2, y2 in [0, 1] (bin k is the value k / (bins - 1)).
    """

    def __init__(
        self, backbone: BackboneConfig, num_classes: int, bins: int, d_model: int = 256, num_queries: int = 30
    ) -> None:
        super().__init__()
        self.backbone, self.bins = Backbone(backbone), bins
        # Strides 16 and 32 only: at 128 px that is 64 + 16 tokens; stride 8 would quadruple the encoder's cost.
        self.proj = nn.ModuleList(nn.Conv2d(c, d_model, 1) for c in self.backbone.channels[1:])
        self.level = nn.Parameter(torch.zeros(len(self.proj), d_model))
        # No dropout: on 2 cores the budget limits these models, not the data (notes/cpu-training.md).
        layer = dict(d_model=d_model, nhead=4, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer, norm_first=True),
            2,
            norm=nn.LayerNorm(d_model),
            enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer, norm_first=True), 2, norm=nn.LayerNorm(d_model)
        )
        self.queries = nn.Embedding(num_queries, d_model)
        self.class_head = nn.Linear(d_model, num_classes + 1)
        self.coord_head = nn.Linear(d_model, 4 * bins)

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.backbone(pixels)[1:]
        tokens = []
        for level, (proj, fmap) in enumerate(zip(self.proj, maps, strict=True)):
            x = proj(fmap)
            _, d, h, w = x.shape
            pos = sine_position_2d(h, w, d, x.device, x.dtype)
            tokens.append(x.flatten(2).transpose(1, 2) + pos + self.level[level])
        memory = self.encoder(torch.cat(tokens, 1))
        slots = self.decoder(self.queries.weight.expand(len(pixels), -1, -1), memory)
        return self.class_head(slots), self.coord_head(slots).unflatten(-1, (4, self.bins))

    def boxes(self, coord_logits: Tensor) -> Tensor:
        """(..., 4, bins) logits -> (..., 4) expected corners in [0, 1], reordered so that x1 <= x2, y1 <= y2."""
        centres = torch.linspace(0, 1, self.bins, device=coord_logits.device)
        x1, y1, x2, y2 = (coord_logits.float().softmax(-1) * centres).sum(-1).unbind(-1)
        return torch.stack([x1.minimum(x2), y1.minimum(y2), x1.maximum(x2), y1.maximum(y2)], -1)


def detection_loss(model: SlotDetector, class_logits: Tensor, coord_logits: Tensor, targets: list[Target]) -> Tensor:
    """Hungarian-matched set loss: class CE (no-object weighted 0.1) + soft two-bin CE + 5 L1 + 2 (1 - GIoU)."""
    class_logits, coord_logits = class_logits.float(), coord_logits.float()
    boxes = model.boxes(coord_logits)
    probs = class_logits.softmax(-1)
    num_classes = class_logits.shape[-1] - 1
    labels = torch.full(class_logits.shape[:2], num_classes, dtype=torch.int64)
    matched_logits, matched_boxes, target_boxes = [], [], []
    for b, target in enumerate(targets):
        with torch.no_grad():
            cost = (
                -probs[b][:, target.labels]
                + L1_WEIGHT * torch.cdist(boxes[b], target.boxes, p=1)
                - GIOU_WEIGHT * generalized_iou(boxes[b], target.boxes)
            )
        rows, cols = hungarian_match(cost)
        labels[b, rows] = target.labels[cols]
        matched_logits.append(coord_logits[b, rows])
        matched_boxes.append(boxes[b, rows])
        target_boxes.append(target.boxes[cols])
    weight = torch.ones(num_classes + 1)
    weight[-1] = NO_OBJECT_WEIGHT
    loss = F.cross_entropy(class_logits.flatten(0, 1), labels.flatten(), weight=weight)
    logits, predicted, wanted = torch.cat(matched_logits), torch.cat(matched_boxes), torch.cat(target_boxes)
    if len(wanted) == 0:
        return loss
    # Soft two-bin targets (the generalist's): coordinate w in [0, 1] is bin position w * 2R of 2R + 1 bins.
    r = (model.bins - 1) // 2
    soft = two_bin_targets(wanted * 2 * r - r, r, model.bins)
    soft_ce = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    l1 = (predicted - wanted).abs().sum(-1).mean()
    giou = (1 - elementwise_generalized_iou(predicted, wanted)).mean()
    return loss + soft_ce + L1_WEIGHT * l1 + GIOU_WEIGHT * giou


# -- data ---------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    labels: Tensor  # (N,) int64 class indices
    boxes: Tensor  # (N, 4) xyxy in [0, 1] of the image


def load_image(image: Image.Image | str | Path, config: VisionLLMConfig) -> tuple[Tensor, tuple[int, int]]:
    """(3, S, S) normalised pixels and the original (width, height), as VisionLLM's processor prepares images."""
    mean, std = torch.tensor(config.image_mean).view(3, 1, 1), torch.tensor(config.image_std).view(3, 1, 1)
    prepared = normalise_image(
        Image.open(image) if isinstance(image, str | Path) else image, config.image_size, mean, std
    )
    return prepared.pixels, prepared.size_wh


class TrainStream:
    """Batch i is a function of (seed, i): consecutive slices of one permutation of the split per epoch."""

    def __init__(
        self, samples: list[Sample], classes: list[str], config: VisionLLMConfig, batch_size: int, seed: int
    ) -> None:
        self.samples, self.classes, self.config = samples, classes, config
        self.batch_size, self.seed = batch_size, seed
        self._orders: dict[int, Tensor] = {}

    def _order(self, epoch: int) -> Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self.samples), generator=generator)}
        return self._orders[epoch]

    def batch(self, i: int) -> tuple[Tensor, list[Target]]:
        picks = []
        for position in range(i * self.batch_size, (i + 1) * self.batch_size):
            epoch, offset = divmod(position, len(self.samples))
            picks.append(self.samples[int(self._order(epoch)[offset])])
        pixels, targets = [], []
        for sample in picks:
            image, (w, h) = load_image(sample.image_path, self.config)
            boxes = torch.tensor([o.box_xyxy_px for o in sample.objects], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([self.classes.index(o.category) for o in sample.objects], dtype=torch.int64)
            pixels.append(image)
            targets.append(Target(labels, (boxes / torch.tensor([w, h, w, h])).clamp(0, 1)))
        return torch.stack(pixels), targets


class SpecialistPredictor:
    """The runner's view of the specialist: boxes in the input image's pixels, classes bound by the instruction."""

    version = 1

    def __init__(self, model: SlotDetector, config: VisionLLMConfig, classes: list[str]) -> None:
        self.model, self.config, self.classes = model, config, classes

    @torch.no_grad()
    def predict(
        self, images: list[Image.Image | str | Path], instructions: list[Instruction], min_score: float = 0.05
    ) -> list[Decoded]:
        training = self.model.training
        self.model.eval()
        loaded = [load_image(image, self.config) for image in images]
        class_logits, coord_logits = self.model(torch.stack([pixels for pixels, _ in loaded]))
        self.model.train(training)
        probs, boxes = class_logits.float().softmax(-1), self.model.boxes(coord_logits)
        answers = []
        for b, ((_, (w, h)), instruction) in enumerate(zip(loaded, instructions, strict=True)):
            if not isinstance(instruction, Instruction) or not instruction.class_names:
                raise ValueError("the specialist answers detection instructions with bound classes only")
            # Only the bound classes the specialist knows can be found; their order is the instruction's.
            names = [name for name in instruction.class_names if name in self.classes]
            if not names:
                answers.append(Decoded(Detections(np.zeros((0, 4)), np.zeros(0), ()), ()))
                continue
            scores, best = probs[b][:, [self.classes.index(name) for name in names]].max(-1)
            keep = (scores >= min_score).nonzero().flatten()
            keep = keep[scores[keep].argsort(descending=True)]
            found = (boxes[b, keep] * torch.tensor([w, h, w, h])).numpy()
            answers.append(Decoded(Detections(found, scores[keep].numpy(), tuple(names[i] for i in best[keep])), ()))
        return answers


# -- the generalist's curve ---------------------------------------------------------------------------------------


def read_run(run: Path) -> tuple[dict[int, float], dict[int, dict]]:
    """Training seconds at each logged step, and the evaluation metrics at each evaluated step, of one run.

    `elapsed_s` restarts at 0 when a run is resumed: the resumed segment is placed after the time of its checkpoint
    (the last multiple of `save_every` below its first step), and steps redone after a crash count once. The
    interval after an evaluation includes it: what exceeds the run's median seconds per step there is removed.
    """
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    config = run / "train_config.json"
    save_every = json.loads(config.read_text())["train"]["save_every"] if config.exists() else None
    segments: list[list[tuple[int, float, bool]]] = []  # (step, elapsed_s, an evaluation ran since the last record)
    evals: dict[int, dict] = {}
    evaluated = False
    for record in records:
        if "eval" in record:
            evals[record["step"]], evaluated = record["eval"], True
            continue
        step, elapsed = record["step"], record["elapsed_s"]
        if not segments or step <= segments[-1][-1][0] or elapsed < segments[-1][-1][1]:
            segments.append([])
        segments[-1].append((step, elapsed, evaluated))
        evaluated = False
    pace = [
        (e1 - e0) / (s1 - s0)
        for segment in segments
        for (s0, e0, _), (s1, e1, after_eval) in pairwise(segment)
        if not after_eval
    ]
    per_step = statistics.median(pace) if pace else 0.0
    seconds: dict[int, float] = {0: 0.0}
    for segment in segments:
        first_step, first_elapsed, _ = segment[0]
        if save_every:
            start = (first_step - 1) // save_every * save_every
        else:
            start = max(0, first_step - round(first_elapsed / per_step)) if per_step else 0
        seconds = {s: t for s, t in seconds.items() if s <= start}
        offset, previous, pauses = _interpolate(seconds, start), (start, 0.0), 0.0
        for step, elapsed, after_eval in segment:
            if after_eval:
                pauses += max(0.0, (elapsed - previous[1]) - per_step * (step - previous[0]))
            seconds[step], previous = offset + elapsed - pauses, (step, elapsed)
    return seconds, evals


def _interpolate(seconds: dict[int, float], step: int) -> float:
    steps = sorted(seconds)
    return float(np.interp(step, steps, [seconds[s] for s in steps]))


def detection_share(stage2: Path, fallback: Path) -> tuple[float, str]:
    """Detection's weight over the sum of the stage-2 task weights, and where they were read."""
    config = stage2 / "train_config.json"
    if config.exists():
        tasks, source = json.loads(config.read_text())["train"]["mix"]["tasks"], str(config)
    else:
        tasks, source = load_run_config(fallback)[1].mix.tasks, str(fallback)
    return tasks.get("detection", 0.0) / sum(tasks.values()), source


def generalist_curve(stage1: Path, stage2: Path, mix_fallback: Path) -> dict:
    """The generalist's box AP against its detection training seconds (see the module docstring)."""
    missing = [str(run / "log.jsonl") for run in (stage1, stage2) if not (run / "log.jsonl").exists()]
    if missing:
        return {"missing": f"{' and '.join(missing)} not found"}
    seconds1, _ = read_run(stage1)
    seconds2, evals = read_run(stage2)
    share, source = detection_share(stage2, mix_fallback)
    stage1_s = seconds1[max(seconds1)]
    logged = np.array(sorted(s for s in seconds2 if s > 0))
    rows = []
    for step, metrics in sorted(evals.items()):
        if "box_AP" not in metrics or len(logged) == 0:
            continue
        nearest = int(logged[np.abs(logged - step).argmin()])
        minutes = (stage1_s + share * seconds2[nearest]) / 60
        rows.append({"minutes": minutes, "step": step, **{k: metrics[k] for k in ("box_AP", "box_AP50", "box_AP75")}})
    total = (stage1_s + share * seconds2[max(seconds2)]) / 60
    curve = {"stage1_s": stage1_s, "stage2_s": seconds2[max(seconds2)], "detection_share": share}
    config = stage2 / "train_config.json"
    eval_images = json.loads(config.read_text())["train"]["eval_images"] if config.exists() else None
    curve |= {"mix_source": source, "total_minutes": total, "eval_images": eval_images, "rows": rows}
    if not rows:
        curve["missing"] = f"{stage2 / 'log.jsonl'} has no detection evaluation (box_AP) yet"
    return curve


# -- training and report ------------------------------------------------------------------------------------------


def train_specialist(args: argparse.Namespace, config: VisionLLMConfig) -> dict:
    layout = ShapesWorldLayout(args.shapesworld)
    categories = json.loads(layout.instances("train").read_text())["categories"]
    classes = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    samples = load_split(args.shapesworld, "train", Task.DETECTION)
    stream = TrainStream(samples, classes, config, args.batch_size, args.seed)
    torch.manual_seed(args.seed)
    model = SlotDetector(config.backbone, len(classes), 2 * config.decoder.coord_range + 1)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=5e-4, betas=(0.9, 0.98)
    )
    # Linear warm-up, then constant: the curve at t minutes must not depend on how long the run will be.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 200))
    predictor = SpecialistPredictor(model, config, classes)
    budget, every = args.minutes * 60, args.eval_every_min * 60
    trained, next_eval, step, rows = 0.0, every, 0, []
    bar = tqdm(desc="specialist", unit="step")
    while trained < budget:
        started = time.perf_counter()
        pixels, targets = stream.batch(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            class_logits, coord_logits = model(pixels)
        loss = detection_loss(model, class_logits, coord_logits, targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        trained += time.perf_counter() - started
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", min=f"{trained / 60:.1f}/{args.minutes:g}")
        if trained >= next_eval or trained >= budget:
            metrics = evaluate_shapesworld(
                predictor, args.shapesworld, "val", tasks=["detection"], limit=args.eval_images, progress=False
            )
            rows.append({"minutes": trained / 60, "step": step, **metrics})
            bar.write(f"{trained / 60:.1f} min, step {step}: AP {metrics['box_AP']:.3f} AP50 {metrics['box_AP50']:.3f}")
            next_eval = (math.floor(trained / every) + 1) * every
    bar.close()
    return {"params": sum(p.numel() for p in model.parameters()), "steps": step, "rows": rows}


def report(args: argparse.Namespace, specialist: dict, generalist: dict | None) -> str:
    lines = [
        "# Generalist vs specialist at equal compute",
        "",
        f"Command: `python bench/specialist.py --shapesworld {args.shapesworld} --minutes {args.minutes:g} "
        f"--eval-every-min {args.eval_every_min:g} --eval-images {args.eval_images} --runs {' '.join(args.runs)}`",
        "",
        "Equal compute: equal training seconds on this machine, against what VisionLLM v1 (tiny) spent on detection:",
        "all of stage 1 (the image tokenizer trained alone as a detector) plus the detection share of stage 2's",
        "training time (detection's weight in the stage-2 task mix over the sum of the weights); evaluation time is",
        "left out on both sides. See the docstring of `bench/specialist.py` for what this does not measure.",
        "",
        f"Specialist: {specialist['params'] / 1e6:.1f}M parameters (the generalist's backbone, 2 + 2 layer "
        f"transformer, 30 queries, coordinate bins), batch {args.batch_size}, torch threads {args.threads}, "
        f"{specialist['steps']} steps in {args.minutes:g} minutes. Box AP on the first {args.eval_images} ShapesWorld "
        "val images.",
        "",
    ]
    rows = [("specialist", row) for row in specialist["rows"]]
    if generalist is None or "missing" in generalist:
        reason = generalist["missing"] if generalist else "no generalist runs given"
        lines += [f"Generalist: {reason}; the specialist alone is reported.", ""]
    else:
        lines += [
            f"Generalist: stage 1 {generalist['stage1_s'] / 60:.1f} min + {generalist['detection_share']:.3f} x "
            f"stage 2 {generalist['stage2_s'] / 60:.1f} min = {generalist['total_minutes']:.1f} min of detection "
            f"(mix from {generalist['mix_source']}); its AP is that of the LLM's slots at each stage-2 evaluation, on "
            f"the first {generalist['eval_images'] or '?'} val images of its own data root. Its first "
            f"{generalist['stage1_s'] / 60:.0f} minutes are stage 1, where the LLM has not yet been trained and "
            "answers nothing: the generalist has no AP there.",
            "",
        ]
        rows += [("generalist", row) for row in generalist.get("rows", [])]
    lines += [
        "Both curves on one axis of detection-training minutes (each row is one side's evaluation):",
        "",
        "| minutes | specialist step | specialist AP | AP50 | generalist step | generalist AP | AP50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, row in sorted(rows, key=lambda item: item[1]["minutes"]):
        cells = f"{row['step']} | {row['box_AP']:.3f} | {row['box_AP50']:.3f}"
        empty = "| | |"
        line = f"| {row['minutes']:.1f} | " + (f"{cells} {empty}" if side == "specialist" else f"{empty} {cells}")
        lines.append(line + " |")
    if generalist and generalist.get("rows"):
        last_g = generalist["rows"][-1]
        last_s = specialist["rows"][-1]
        reached = next((r for r in specialist["rows"] if r["box_AP"] >= last_g["box_AP"]), None)
        lines += [
            "",
            f"At the generalist's whole detection budget ({last_g['minutes']:.0f} min): specialist box AP "
            f"{last_s['box_AP']:.3f} / AP50 {last_s['box_AP50']:.3f}, generalist {last_g['box_AP']:.3f} / "
            f"{last_g['box_AP50']:.3f}. "
            + (
                f"The specialist first reached the generalist's final AP after {reached['minutes']:.0f} min."
                if reached
                else "The specialist did not reach the generalist's final AP."
            ),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapesworld", type=Path, default=Path("data/shapesworld"))
    parser.add_argument("--minutes", type=float, help="training time (default: the generalist's detection time)")
    parser.add_argument("--eval-every-min", type=float, default=5.0, help="minutes of training between evaluations")
    parser.add_argument("--eval-images", type=int, default=50)
    parser.add_argument(
        "--runs", nargs=2, default=["runs/tiny-stage1", "runs/tiny-stage2"], metavar=("STAGE1", "STAGE2")
    )
    parser.add_argument("--preset", type=Path, default=Path("configs/tiny_stage1.yaml"), help="the generalist's model")
    parser.add_argument("--mix", type=Path, default=Path("configs/tiny_stage2.yaml"), help="stage-2 task mix fallback")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--report-from", type=Path, help="write the report again from a results JSON of an earlier run (no training)"
    )
    args = parser.parse_args()
    if args.report_from:
        results = json.loads(args.report_from.read_text())
        for key, value in results["args"].items():
            if key not in ("out", "report_from"):
                setattr(args, key, value)
        text = report(args, results["specialist"], results["generalist"])
        print(text)
        if args.out:
            args.out.write_text(text)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    config, _ = load_run_config(args.preset)
    generalist = generalist_curve(Path(args.runs[0]), Path(args.runs[1]), args.mix)
    if "missing" in generalist:
        logger.warning("generalist: %s; reporting the specialist alone", generalist["missing"])
    if args.minutes is None:
        total = generalist.get("total_minutes")
        args.minutes = float(math.ceil(total)) if total else 30.0
    specialist = train_specialist(args, config)
    text = report(args, specialist, generalist)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        results = {"args": settings, "specialist": specialist}
        args.out.with_suffix(".json").write_text(json.dumps(results | {"generalist": generalist}, indent=2) + "\n")


if __name__ == "__main__":
    main()
