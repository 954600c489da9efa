"""The render-check: generated and edited images scored by a perception model.

Text-to-image and editing have no ground-truth pixels to compare with (many images answer a prompt), so the check
asks what a person would: is each requested shape there in the requested colour (presence), is the first shape where
the prompt put it against the second (layout: left of, right of, above, below), did the edited object change as
asked while the others stayed (edit accuracy, preservation IoU)?

The judge is a perception model of the project (the evaluated model itself when it segments): its instance
segmentation over the five shapes finds each shape and its mask; the colour is ShapesWorld's palette colour nearest
to the median of the mask's pixels. Each score has a control that shows the check discriminates: the same scoring
with each prompt paired with another prompt's image (blind), and, for edits, the source image returned unchanged
(copy), which keeps everything and changes nothing. The judge's own reliability is its score on the true drawings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from visionllm.data.shapes.drawings import Drawing
from visionllm.data.shapes.scene import COLORS, SHAPES
from visionllm.eval.controls import derangement
from visionllm.formats.results import Detections, GeneratedImage
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.ops.boxes import box_iou

MIN_SCORE = 0.4
"""A judged shape counts from this score on."""

MATCH_IOU = 0.5
"""An edited object is the judged shape whose box overlaps its own this much."""

_PALETTE = np.array(list(COLORS.values()), dtype=np.float64)
_NAMES = list(COLORS)


@dataclass(frozen=True)
class Seen:
    """One shape the judge found: category, palette colour, box (x1, y1, x2, y2 in pixels of the drawing's size)
    and score."""

    category: str
    color: str
    box_xyxy_px: np.ndarray
    score: float

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box_xyxy_px
        return (x1 + x2) / 2, (y1 + y2) / 2


def palette_color(pixels: np.ndarray, mask: np.ndarray) -> str:
    """The palette colour nearest (RGB distance) to the median of the pixels under a mask (H, W)."""
    values = pixels[mask] if mask.any() else pixels.reshape(-1, 3)
    median = np.median(values.astype(np.float64), axis=0)
    return _NAMES[int(np.argmin(((_PALETTE - median) ** 2).sum(1)))]


def judge(
    model: Any, images: Sequence[np.ndarray], size: int, batch_size: int = 8, progress: bool = False, desc: str = ""
) -> list[list[Seen]]:
    """The shapes a perception model finds in each image (uint8 (H, W, 3)), at `size` x `size` pixels (images are
    resized to it, as drawings are drawn), with their colours."""
    instruction = build_instruction(Task.INSTANCE_SEGMENTATION, classes=list(SHAPES))
    out: list[list[Seen]] = []
    for start in tqdm(
        range(0, len(images), batch_size), desc=desc or "render-check", disable=not progress, leave=False
    ):
        chunk = [_at_size(image, size) for image in images[start : start + batch_size]]
        found = model.predict(chunk, [instruction] * len(chunk), min_score=MIN_SCORE)
        for pixels, decoded in zip(chunk, found, strict=True):
            out.append(_seen(pixels, decoded.prediction))
    return out


def _at_size(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def _seen(pixels: np.ndarray, found: Detections) -> list[Seen]:
    seen = []
    for k, name in enumerate(found.class_names):
        box = found.boxes_xyxy_px[k]
        if found.masks is not None:
            mask = found.masks[k]
        else:
            x1, y1, x2, y2 = (round(float(v)) for v in box)
            mask = np.zeros(pixels.shape[:2], bool)
            mask[y1:y2, x1:x2] = True
        seen.append(Seen(name, palette_color(pixels, mask), box, float(found.scores[k])))
    return seen


def _best(seen: Sequence[Seen], category: str, color: str) -> Seen | None:
    matches = [s for s in seen if s.category == category and s.color == color]
    return max(matches, key=lambda s: s.score) if matches else None


def _holds(relation: str, first: Seen, second: Seen) -> bool:
    (ax, ay), (bx, by) = first.center, second.center
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


def score_generation(drawings: Sequence[Drawing], seen: Sequence[Sequence[Seen]]) -> dict[str, float]:
    """Presence (share of requested shapes found in their colour), all-present (share of prompts with every shape)
    and layout (share of two-shape prompts whose relation holds between the found shapes) of judged images, one
    per drawing's prompt."""
    found = wanted = complete = 0
    layout: list[bool] = []
    for drawing, shapes in zip(drawings, seen, strict=True):
        best = [_best(shapes, o.category, o.color) for o in drawing.objects]
        found += sum(b is not None for b in best)
        wanted += len(best)
        complete += all(b is not None for b in best)
        if drawing.relation is not None:
            first, second = best
            layout.append(first is not None and second is not None and _holds(drawing.relation, first, second))
    return {
        "presence": found / max(wanted, 1),
        "all_present": complete / max(len(drawings), 1),
        "layout": float(np.mean(layout)) if layout else 0.0,
    }


def score_edits(drawings: Sequence[Drawing], seen: Sequence[Sequence[Seen]]) -> dict[str, float]:
    """Edit accuracy (the edited object as asked: recoloured in place, or gone) and preservation (mean box IoU of
    each other object with the judged shape of its category and colour, 0 when none) of judged edited images, one
    per drawing's edit."""
    right, kept = [], []
    for drawing, shapes in zip(drawings, seen, strict=True):
        edit = drawing.edit
        target = drawing.objects[edit.index]
        box = np.asarray(target.box_xyxy_px, dtype=np.float64)

        def at_place(category: str, color: str, shapes=shapes, box=box) -> bool:
            return any(
                s.category == category and s.color == color and _iou(s.box_xyxy_px, box) >= MATCH_IOU for s in shapes
            )

        gone = not at_place(target.category, target.color)
        if edit.kind == "remove":
            right.append(gone)
        else:
            right.append(gone and at_place(target.category, edit.color))
        for k, other in enumerate(drawing.objects):
            if k == edit.index:
                continue
            same = [s for s in shapes if s.category == other.category and s.color == other.color]
            kept.append(max((_iou(s.box_xyxy_px, np.asarray(other.box_xyxy_px)) for s in same), default=0.0))
    return {"accuracy": float(np.mean(right)) if right else 0.0, "preservation": float(np.mean(kept)) if kept else 0.0}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(box_iou(np.asarray(a, np.float64)[None], np.asarray(b, np.float64)[None])[0, 0])


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _made(
    count: int, make: Callable[[slice], list[GeneratedImage]], batch_size: int, progress: bool, desc: str
) -> list[GeneratedImage]:
    """The images `make` returns for `count` drawings, called on each slice of `batch_size` of them in turn."""
    made: list[GeneratedImage] = []
    for start in tqdm(range(0, count, batch_size), desc=desc, disable=not progress, leave=False):
        made += make(slice(start, start + batch_size))
    return made


def evaluate_generation(
    model: Any,
    drawings: Sequence[Drawing],
    judge_model: Any | None = None,
    batch_size: int = 8,
    progress: bool = True,
    controls: bool = True,
    steps: int | None = None,
) -> dict[str, float]:
    """The render-check of text-to-image on drawings' prompts (each image from seed 0).

    Returns:
        generation_presence, generation_all_present, generation_layout; with `controls`, the same with each prompt
        scored on another prompt's image (`_blind`) and on the true drawings (`_truth`: the judge's own ceiling).
    """
    judge_model = judge_model or model
    size = _size(drawings)
    made = _made(
        len(drawings),
        lambda chunk: model.text_to_image([d.prompt for d in drawings[chunk]], seed=0, steps=steps),
        batch_size,
        progress,
        "eval generation",
    )
    seen = judge(judge_model, [m.pixels for m in made], size, batch_size, progress, "judge generation")
    metrics = {f"generation_{k}": v for k, v in score_generation(drawings, seen).items()}
    if controls and len(drawings) > 1:
        other = derangement(range(len(drawings)))
        blind = score_generation(drawings, [seen[other[i]] for i in range(len(drawings))])
        metrics |= {f"generation_{k}_blind": v for k, v in blind.items()}
        truth = judge(judge_model, [_pixels(d.image_path) for d in drawings], size, batch_size, progress, "judge truth")
        metrics |= {f"generation_{k}_truth": v for k, v in score_generation(drawings, truth).items()}
    return metrics


def evaluate_editing(
    model: Any,
    drawings: Sequence[Drawing],
    judge_model: Any | None = None,
    batch_size: int = 8,
    progress: bool = True,
    controls: bool = True,
    steps: int | None = None,
) -> dict[str, float]:
    """The render-check of instruction editing on drawings' edits (each from seed 0).

    Returns:
        edit_accuracy, edit_preservation; with `controls`, the same scored on another edit's output (`_blind`), on
        the source unchanged (`_copy`: preservation without editing) and on the true edited drawings (`_truth`).
    """
    judge_model = judge_model or model
    size = _size(drawings)
    sources = [_pixels(d.image_path) for d in drawings]
    made = _made(
        len(drawings),
        lambda chunk: model.edit_image(sources[chunk], [d.edit.instruction for d in drawings[chunk]], steps=steps),
        batch_size,
        progress,
        "eval editing",
    )
    seen = judge(judge_model, [m.pixels for m in made], size, batch_size, progress, "judge edits")
    metrics = {f"edit_{k}": v for k, v in score_edits(drawings, seen).items()}
    if controls and len(drawings) > 1:
        other = derangement(range(len(drawings)))
        metrics |= {
            f"edit_{k}_blind": v
            for k, v in score_edits(drawings, [seen[other[i]] for i in range(len(drawings))]).items()
        }
        copied = judge(judge_model, sources, size, batch_size, progress, "judge sources")
        metrics |= {f"edit_{k}_copy": v for k, v in score_edits(drawings, copied).items()}
        targets = [_pixels(d.edit.image_path) for d in drawings]
        truth = judge(judge_model, targets, size, batch_size, progress, "judge truth")
        metrics |= {f"edit_{k}_truth": v for k, v in score_edits(drawings, truth).items()}
    return metrics


def _size(drawings: Sequence[Drawing]) -> int:
    """The side the drawings were drawn at (their boxes' pixels)."""
    with Image.open(drawings[0].image_path) as image:
        return image.size[0]
