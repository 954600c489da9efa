"""What limits the tiny generation decoder: its condition path, or how fast its UNet learns to draw?

The answer-given check. The tiny preset's generation UNet is trained on ShapesWorld's drawings with each drawing's
attributes as its condition in place of the LLM's query states and the condition mapper: three learned tokens
(first shape and colour, second shape and colour, relation), the best condition a prompt could give. Whatever
presence this decoder reaches bounds what the query states can reach through the mapper for the same samples.

At each evaluation the weight average (decay 0.999) draws the first val prompts (25 DDIM steps, guidance 3, seed =
prompt index), and the shipped v2 model judges them as `visionllm eval --tasks generation` does; the blind control
pairs each prompt with another prompt's image. At the end, the denoising profile: the clean image the UNet predicts
from a val drawing noised to step t, its mean absolute error against the drawing (pixels in [-1, 1]) and a picture
of both (docs/benchmarks/v2_generation_limits.png).

    python bench/v2_generation_limits.py --minutes 45 --every 9

Run alone: two jobs on 2 cores starve each other. Results go to docs/benchmarks/v2_generation_limits.md.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from harness import machine
from visionllm import load_pretrained
from visionllm.config import build, load_yaml
from visionllm.data.shapes.drawings import RELATIONS, Drawing, load_drawings
from visionllm.data.shapes.scene import COLORS, SHAPES
from visionllm.eval.controls import derangement
from visionllm.eval.render_check import judge, score_generation
from visionllm.models.v2.image_decoder import ImageDecoder, ImageDecoderConfig

ROOT = Path(__file__).resolve().parents[1]
PROFILE_STEPS = (200, 400, 600, 800, 950)


def attributes(drawing: Drawing) -> list[int]:
    """A drawing's (shape, colour) of each of its two objects and its relation, as indices; a missing second
    object or relation is the index past the last."""
    first, *rest = drawing.objects
    second = rest[0] if rest else None
    relation = RELATIONS.index(drawing.relation) if drawing.relation else len(RELATIONS)
    return [
        SHAPES.index(first.category),
        list(COLORS).index(first.color),
        SHAPES.index(second.category) if second else len(SHAPES),
        list(COLORS).index(second.color) if second else len(COLORS),
        relation,
    ]


class AnswerGiven(nn.Module):
    """(B, 5) attribute indices -> (B, 3, width) condition tokens: each object's shape + colour + slot, and the
    relation + its slot."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.shape = nn.Embedding(len(SHAPES) + 1, width)
        self.color = nn.Embedding(len(COLORS) + 1, width)
        self.relation = nn.Embedding(len(RELATIONS) + 1, width)
        self.slot = nn.Embedding(3, width)

    def forward(self, ids: Tensor) -> Tensor:
        ids = ids.long()  # sampling casts the "states" to the UNet's dtype
        first = self.shape(ids[:, 0]) + self.color(ids[:, 1]) + self.slot.weight[0]
        second = self.shape(ids[:, 2]) + self.color(ids[:, 3]) + self.slot.weight[1]
        relation = self.relation(ids[:, 4]) + self.slot.weight[2]
        return torch.stack([first, second, relation], 1)


def pixels_of(drawings: list[Drawing], size: int) -> Tensor:
    """(N, 3, size, size) in [-1, 1]: the drawings brought to the decoder's size (bicubic, as the judge resizes)."""
    arrays = [np.asarray(Image.open(d.image_path).convert("RGB").resize((size, size), Image.BICUBIC)) for d in drawings]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(images: Tensor) -> np.ndarray:
    return ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def presence(
    decoder: ImageDecoder, judge_model, drawings: list[Drawing], ids: Tensor, size: int
) -> tuple[float, float]:
    """Presence of what `decoder` draws for the drawings' prompts, and its blind control."""
    made = torch.cat(
        [
            decoder.sample(ids[i : i + 16], seeds=list(range(i, min(i + 16, len(ids)))), steps=25, guidance=3.0)
            for i in range(0, len(ids), 16)
        ]
    )
    seen = judge(judge_model, list(to_uint8(made)), size)
    other = derangement(range(len(drawings)))
    blind = score_generation(drawings, [seen[other[i]] for i in range(len(drawings))])
    return score_generation(drawings, seen)["presence"], blind["presence"]


@torch.no_grad()
def profile(decoder: ImageDecoder, clean: Tensor, ids: Tensor, picture: Path) -> list[tuple[int, float, float]]:
    """(step, SNR, mean absolute error of the predicted clean image) at each of `PROFILE_STEPS`; writes the
    noisy inputs and predictions of the first 8 drawings under `picture`."""
    rows, strips = [], [clean[:8]]
    condition = decoder.condition(ids.float())
    generator = torch.Generator().manual_seed(1)
    for t in PROFILE_STEPS:
        alpha = decoder.alphas_cumprod[t]
        noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * torch.randn(clean.shape, generator=generator)
        v = decoder._denoise(noisy, torch.full((len(clean),), t), condition, None).float()
        predicted = alpha.sqrt() * noisy - (1 - alpha).sqrt() * v  # v-prediction's clean image
        rows.append((t, float(alpha / (1 - alpha)), float((predicted - clean).abs().mean())))
        strips += [noisy[:8].clamp(-1, 1), predicted[:8].clamp(-1, 1)]
    grid = np.concatenate([np.concatenate(list(to_uint8(s)), 1) for s in strips], 0)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(picture)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapesworld", type=Path, default=ROOT / "data/shapesworld")
    parser.add_argument("--judge", type=Path, default=ROOT / "checkpoints/visionllm-v2-tiny")
    parser.add_argument("--minutes", type=float, default=45.0, help="training time, evaluations not counted")
    parser.add_argument("--every", type=float, default=9.0, help="minutes between evaluations")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--prompts", type=int, default=128, help="val prompts drawn at each evaluation")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/v2_generation_limits.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    preset = load_yaml(ROOT / "configs/tiny_v2.yaml")["model"]["generation"]
    # uniform timesteps with min-SNR weighting: the preset's high-noise bias leaves a grain of noise in every image
    config = build(ImageDecoderConfig, preset | {"noise_bias": 0.0, "snr_gamma": 5.0}, "model.generation")
    decoder = ImageDecoder(config, in_width=config.width)
    decoder.mapper = AnswerGiven(config.width)
    train, val = load_drawings(args.shapesworld, "train"), load_drawings(args.shapesworld, "val")[: args.prompts]
    images, train_ids = pixels_of(train, config.image_size), torch.tensor([attributes(d) for d in train])
    val_ids = torch.tensor([attributes(d) for d in val])
    judge_model = load_pretrained(args.judge)
    size = Image.open(val[0].image_path).size[0]
    average = copy.deepcopy(decoder).eval()
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(0)
    curve, losses, step, trained, started = [], [], 0, 0.0, time.perf_counter()
    next_eval = args.every
    while True:
        picked = torch.randint(len(images), (args.batch_size,), generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = decoder.loss(train_ids[picked], images[picked])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for kept, live in zip(average.parameters(), decoder.parameters(), strict=True):
                kept.lerp_(live, 1 - decay)
        losses.append(loss.item())
        step += 1
        trained = (time.perf_counter() - started) / 60
        if trained >= min(next_eval, args.minutes):
            paused = time.perf_counter()
            found, blind = presence(average, judge_model, val, val_ids, size)
            curve.append((step * args.batch_size, trained, float(np.mean(losses[-200:])), found, blind))
            print(f"{step * args.batch_size} samples, {trained:.1f} min: presence {found:.3f} (blind {blind:.3f})")
            started += time.perf_counter() - paused
            next_eval += args.every
            if trained >= args.minutes:
                break
    picture = args.out.with_suffix(".png")
    rows = profile(average, pixels_of(val[:64], config.image_size), val_ids[:64], picture)
    lines = [
        "# The tiny generation decoder with the answer given",
        "",
        f"`python bench/v2_generation_limits.py --minutes {args.minutes:g} --every {args.every:g}` on {machine()}:",
        f"the tiny preset's UNet ({sum(p.numel() for p in decoder.unet.parameters()) / 1e6:.1f}M parameters,"
        f" {config.image_size} px), each drawing's attributes as its condition, batch {args.batch_size},"
        f" lr {args.lr:g}, bf16 autocast; presence of {len(val)} val prompts drawn by the weight average.",
        "",
        "| samples seen | minutes | loss | presence | blind |",
        "|---|---|---|---|---|",
        *(f"| {n:,} | {m:.1f} | {loss:.4f} | {p:.3f} | {b:.3f} |" for n, m, loss, p, b in curve),
        "",
        f"The clean image predicted from val drawings noised to step t (first 64; [{picture.name}]({picture.name}):"
        " drawings, then each step's noisy input and prediction):",
        "",
        "| t | SNR | mean absolute error |",
        "|---|---|---|",
        *(f"| {t} | {snr:.3f} | {error:.3f} |" for t, snr, error in rows),
        "",
    ]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
