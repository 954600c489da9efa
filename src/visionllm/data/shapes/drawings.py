"""ShapesWorld drawings: the text-to-image and editing data a small diffusion decoder can learn on a CPU.

A drawing is one or two large shapes on a plain background, asked for by a prompt that names each shape's colour
and, for two, where the first is: "a red circle left of a blue square" (left of, right of, above, below). Each
drawing also has an edit: "make the red circle green" or "remove the blue square", with the edited drawing as its
target. Drawings are a function of (seed, split, index) alone, from a stream of their own: adding them changed no
other file of the dataset.

    root/drawings/drawings_{split}.json     prompts, objects (shape, colour, box), relation, the edit
    root/drawings/{split}/{id:012d}.png     the drawings (the generation targets and the edits' sources)
    root/drawings/edited/{split}/{id:012d}.png   the edits' targets

The edit records use InstructPix2Pix's keys (input_image, edit_prompt, edited_image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from visionllm.data.shapes.scene import (
    COLORS,
    SHAPES,
    Background,
    Scene,
    SceneObject,
    ShapesWorldConfig,
    _muted_color,
    render_scene,
)

RELATIONS = ("left of", "right of", "above", "below")
"""How a prompt places its first shape against its second."""

EXTENT = (0.30, 0.36)
"""Shape extent as a share of the image side: large enough to read at a generation decoder's 64 px."""

_STREAM = 7_777_777  # drawings draw from their own random stream: the scenes' files do not change
_ID_BASE = {"train": 3_000_000, "val": 4_000_000}


@dataclass(frozen=True)
class DrawnObject:
    """One shape of a drawing: its category, colour and box (x1, y1, x2, y2 in pixels of the drawing)."""

    category: str
    color: str
    box_xyxy_px: tuple[float, float, float, float]

    @property
    def name(self) -> str:
        return f"{self.color} {self.category}"


@dataclass(frozen=True)
class DrawingEdit:
    """A drawing's edit: its instruction, what it does ("recolor" or "remove") to which object (`index`), the
    new colour of a recolouring, and the edited drawing's file."""

    instruction: str
    kind: str
    index: int
    color: str | None
    image_path: Path


@dataclass(frozen=True)
class Drawing:
    """A text-to-image sample with its edit.

    Attributes:
        image_id: unique in the dataset.
        image_path: the drawing's file.
        prompt: what it shows, in words.
        objects: its shapes, the prompt's order.
        relation: where objects[0] is against objects[1] (one of `RELATIONS`); None for one shape.
        edit: its edit.
    """

    image_id: int
    image_path: Path
    prompt: str
    objects: tuple[DrawnObject, ...]
    relation: str | None
    edit: DrawingEdit


def _shape(rng: np.random.Generator, category: str, color: str, center: tuple[float, float], size: int) -> SceneObject:
    rgb = tuple(int(v) for v in np.clip(np.asarray(COLORS[color]) + rng.integers(-12, 13, size=3), 0, 255))
    extent = float(rng.uniform(*EXTENT) * size)
    rotation = 0.0 if category == "circle" else float(rng.uniform(-np.pi / 12, np.pi / 12))
    return SceneObject(category, color, rgb, "large", center, extent, rotation)


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The tight box of a silhouette (x1, y1, x2, y2 in pixels, COCO's pixel-edge convention)."""
    rows, cols = np.nonzero(mask)
    return (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


@dataclass(frozen=True)
class DrawnScene:
    """A drawing as sampled, before it is written: its scene and prompt, and its edit with the edited scene.

    Attributes:
        scene: what is drawn.
        prompt: what it shows, in words.
        relation: where the first shape is against the second; None for one shape.
        edited: the scene after the edit.
        instruction: the edit in words.
        kind: "recolor" or "remove".
        index: the edited shape.
        color: the new colour of a recolouring (None for a removal).
    """

    scene: Scene
    prompt: str
    relation: str | None
    edited: Scene
    instruction: str
    kind: str
    index: int
    color: str | None = None


def make_drawing(seed: int, split: str, index: int, config: ShapesWorldConfig = ShapesWorldConfig()) -> DrawnScene:
    """Drawing `index` of a split. Held-out (colour, shape) pairs of the config are never drawn in the train split,
    nor made by its edits."""
    rng = np.random.default_rng([_STREAM, seed, 0 if split == "train" else 1, index])
    size = config.image_size
    held = set(config.holdout_pairs) if split == "train" else set()
    pairs = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in held]
    count = 1 if rng.random() < 0.3 else 2
    picks = rng.choice(len(pairs), size=count, replace=False)
    chosen = [pairs[k] for k in picks]
    relation = None
    if count == 1:
        centers = [tuple(float(v) for v in rng.uniform(0.3, 0.7, size=2) * size)]
    else:
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        near, far = rng.uniform(0.18, 0.30), rng.uniform(0.70, 0.82)  # centres far enough apart never to touch
        across = rng.uniform(0.28, 0.72, size=2)
        first, second = (near, far) if relation in ("left of", "above") else (far, near)
        if relation in ("left of", "right of"):
            centers = [(first * size, across[0] * size), (second * size, across[1] * size)]
        else:
            centers = [(across[0] * size, first * size), (across[1] * size, second * size)]
    objects = tuple(_shape(rng, s, c, center, size) for (c, s), center in zip(chosen, centers, strict=True))
    background = Background("plain", _muted_color(rng), _muted_color(rng))
    scene = Scene(size, background, objects)
    names = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c, s in chosen]
    prompt = names[0] if count == 1 else f"{names[0]} {relation} {names[1]}"
    target = int(rng.integers(count))
    color, shape = chosen[target]
    if count == 2 and rng.random() < 0.4:
        return DrawnScene(
            scene, prompt, relation, scene.without(target), f"remove the {color} {shape}", "remove", target
        )
    colors = [c for c in COLORS if c != color and (c, shape) not in held and (c, shape) not in chosen]
    new = colors[int(rng.integers(len(colors)))]
    edited = scene.recolored(target, new)
    return DrawnScene(scene, prompt, relation, edited, f"make the {color} {shape} {new}", "recolor", target, new)


class DrawingsLayout:
    """Where a ShapesWorld folder keeps its drawings."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def records(self, split: str) -> Path:
        return self.root / "drawings" / f"drawings_{split}.json"

    def image_dir(self, split: str) -> Path:
        return self.root / "drawings" / split

    def edited_dir(self, split: str) -> Path:
        return self.root / "drawings" / "edited" / split


def write_drawings(
    root: str | Path,
    split: str,
    count: int,
    seed: int = 0,
    config: ShapesWorldConfig = ShapesWorldConfig(),
    progress: bool = True,
) -> int:
    """Write `count` drawings of a split under `root` (see the module docstring); returns how many."""
    layout = DrawingsLayout(root)
    for folder in (layout.image_dir(split), layout.edited_dir(split)):
        folder.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for index in tqdm(range(count), desc=f"drawings {split}", disable=not progress):
        made = make_drawing(seed, split, index, config)
        image_id = _ID_BASE[split] + index
        name = f"{image_id:012d}.png"
        drawn = render_scene(made.scene)
        Image.fromarray(drawn.image).save(layout.image_dir(split) / name, compress_level=1)
        Image.fromarray(render_scene(made.edited).image).save(layout.edited_dir(split) / name, compress_level=1)
        records.append(
            {
                "id": image_id,
                "image": f"drawings/{split}/{name}",
                "prompt": made.prompt,
                "relation": made.relation,
                "objects": [
                    {"category": o.category, "color": o.color, "bbox_xyxy": _box(mask)}
                    for o, mask in zip(made.scene.objects, drawn.masks, strict=True)
                ],
                "input_image": f"drawings/{split}/{name}",
                "edit_prompt": made.instruction,
                "edited_image": f"drawings/edited/{split}/{name}",
                "edit": {"kind": made.kind, "index": made.index, "color": made.color},
            }
        )
    path = layout.records(split)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"info": {"seed": seed, "image_size": config.image_size}, "drawings": records}))
    tmp.replace(path)
    return len(records)


def load_drawings(root: str | Path, split: str) -> list[Drawing]:
    """A split's drawings.

    Raises:
        FileNotFoundError: the folder has no drawings for the split (made by `visionllm data shapes`).
    """
    root = Path(root)
    path = DrawingsLayout(root).records(split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: `visionllm data shapes --out {root}` writes the drawings")
    out = []
    for r in json.loads(path.read_text())["drawings"]:
        objects = tuple(DrawnObject(o["category"], o["color"], tuple(o["bbox_xyxy"])) for o in r["objects"])
        e = r["edit"]
        edit = DrawingEdit(r["edit_prompt"], e["kind"], e["index"], e["color"], root / r["edited_image"])
        out.append(Drawing(r["id"], root / r["image"], r["prompt"], objects, r["relation"], edit))
    return out
