"""ShapesWorld scenes: what is in an image, sampled from a seed, and how it is drawn.

A `Scene` is a full description (background and objects, back to front); `render_scene` is a pure
function of it, so an edited scene (an object recoloured or removed) renders the edit's target.
Coordinates are pixels, x right, y down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from visionllm.formats.keypoints import COCO_KEYPOINT_NAMES, COCO_SKELETON

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
NEW_SHAPES = ("cross", "diamond", "arrow", "crescent", "heart")
"""Shapes the base world never draws: a set of them (`ShapesWorldConfig.shapes`) makes categories a model trained
on ShapesWorld has never seen, for fine-tuning (`visionllm data coco`)."""
PERSON = "person"
CATEGORIES = (*SHAPES, PERSON)  # COCO category id = index + 1
SIZES = ("small", "medium", "large")
BACKGROUNDS = ("plain", "gradient", "noise")

# Object extent (diameter of the circumscribed circle for shapes, height for people) as a fraction
# of the image side, per size class.
SHAPE_EXTENT = {"small": (0.10, 0.17), "medium": (0.17, 0.28), "large": (0.28, 0.42)}
PERSON_EXTENT = {"small": (0.30, 0.42), "medium": (0.42, 0.56), "large": (0.56, 0.72)}

KEYPOINT_NAMES = COCO_KEYPOINT_NAMES
SKELETON = COCO_SKELETON
# Limbs drawn as lines (0-based keypoint indices): arms, legs, shoulders, hips, torso sides.
_LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16), (5, 6), (11, 12), (5, 11), (6, 12))


@dataclass(frozen=True)
class ShapesWorldConfig:
    """How scenes are sampled.

    Attributes:
        image_size: side of the square image in pixels, 64..512.
        min_objects, max_objects: objects per image.
        person_probability: chance that an object is a person (stick figure with 17 keypoints).
        holdout_pairs: (color, shape) pairs never drawn in the train split (compositional splits).
        min_visible_fraction: an occluded object keeps at least this share of its pixels, in one piece.
        shapes: the shapes drawn (any of `SHAPES` and `NEW_SHAPES`).
    """

    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 6
    person_probability: float = 0.15
    holdout_pairs: tuple[tuple[str, str], ...] = ()
    min_visible_fraction: float = 0.6
    shapes: tuple[str, ...] = SHAPES

    def __post_init__(self) -> None:
        unknown = [s for s in self.shapes if s not in (*SHAPES, *NEW_SHAPES)]
        if unknown or not self.shapes or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(
                f"shapes must be distinct names among {', '.join((*SHAPES, *NEW_SHAPES))}; got {list(self.shapes)}"
            )
        if not 64 <= self.image_size <= 512:
            raise ValueError(f"image_size must be within 64..512, got {self.image_size}")
        if not 0 <= self.min_objects <= self.max_objects <= 20:
            raise ValueError(f"need 0 <= min_objects <= max_objects <= 20, got {self.min_objects}, {self.max_objects}")
        if not 0 <= self.person_probability <= 1:
            raise ValueError(f"person_probability must be in [0, 1], got {self.person_probability}")
        for color, shape in self.holdout_pairs:
            if color not in COLORS or shape not in (*CATEGORIES, *NEW_SHAPES):
                raise ValueError(f"held-out pair ({color!r}, {shape!r}) is not a colour and a category of ShapesWorld")


@dataclass(frozen=True)
class Background:
    """kind: plain, gradient or noise; colours are muted so that they never read as a named colour."""

    kind: str
    color_a: tuple[int, int, int]
    color_b: tuple[int, int, int]
    angle: float = 0.0
    noise_seed: int = 0


@dataclass(frozen=True)
class SceneObject:
    """One object. Shapes are given by centre, extent and rotation; people by their 17 joints.

    Attributes:
        category: a shape name or "person".
        color: colour name; `rgb` is the jittered shade actually drawn.
        size: size class.
        center_xy: centre in pixels.
        extent_px: circumscribed diameter (shapes) or height (people) in pixels.
        rotation: radians.
        joints_xy: (17, 2) keypoints in COCO order (people only).
        line_width: stroke width of a stick figure in pixels.
    """

    category: str
    color: str
    rgb: tuple[int, int, int]
    size: str
    center_xy: tuple[float, float]
    extent_px: float
    rotation: float = 0.0
    joints_xy: tuple[tuple[float, float], ...] = ()
    line_width: int = 2


@dataclass(frozen=True)
class Scene:
    """An image's full description: size, background, objects from back to front."""

    size: int
    background: Background
    objects: tuple[SceneObject, ...] = field(default=())

    def without(self, index: int) -> Scene:
        return replace(self, objects=self.objects[:index] + self.objects[index + 1 :])

    def recolored(self, index: int, color: str) -> Scene:
        obj = self.objects[index]
        shade = tuple(
            int(np.clip(c + (s - b), 0, 255)) for c, s, b in zip(COLORS[color], obj.rgb, COLORS[obj.color], strict=True)
        )
        objects = list(self.objects)
        objects[index] = replace(obj, color=color, rgb=shade)
        return replace(self, objects=tuple(objects))


@dataclass(frozen=True, eq=False)
class RenderedScene:
    """Pixels and per-object masks of a scene.

    Attributes:
        image: (S, S, 3) uint8 RGB.
        masks: (N, S, S) bool, each object's full silhouette.
        visible: (N, S, S) bool, the part of each silhouette not covered by objects in front.
        keypoints_xyv: (N, 17, 3) COCO keypoints (x, y, visibility 0/1/2); zeros for shapes.
    """

    image: np.ndarray
    masks: np.ndarray
    visible: np.ndarray
    keypoints_xyv: np.ndarray


# ---------------------------------------------------------------------------------------------
# Geometry


def shape_outline(obj: SceneObject, circle_points: int = 48) -> np.ndarray:
    """(P, 2) outline of a shape in pixels (people have none)."""
    radius = obj.extent_px / 2
    if obj.category in NEW_SHAPES:
        xy = _NEW_OUTLINES[obj.category]() * radius
        c, s = math.cos(obj.rotation), math.sin(obj.rotation)
        return xy @ np.array([[c, s], [-s, c]]) + np.asarray(obj.center_xy)
    if obj.category == "circle":
        angles = np.linspace(0, 2 * np.pi, circle_points, endpoint=False)
        radii = np.full_like(angles, radius)
    elif obj.category == "star":
        angles = np.arange(10) * (np.pi / 5) - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    else:
        corners = {"square": 4, "triangle": 3, "hexagon": 6}[obj.category]
        angles = np.arange(corners) * (2 * np.pi / corners) - np.pi / 2 + (np.pi / 4 if corners == 4 else 0)
        radii = np.full_like(angles, radius)
    angles = angles + obj.rotation
    cx, cy = obj.center_xy
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _cross() -> np.ndarray:
    a = 0.32  # half the width of an arm, the arms reaching the unit circle's square
    r = 1 / math.sqrt(2)
    corners = [(a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    return np.array([(-a, -r), *corners])


def _crescent(points: int = 24) -> np.ndarray:
    """The unit disc less a disc of radius 0.8 centred 0.45 to the right: a crescent opening right."""
    d, r2 = 0.45, 0.8
    x = (1 - r2**2 + d**2) / (2 * d)  # where the two circles cross
    outer_from = math.atan2(math.sqrt(1 - x * x), x)
    inner_from = math.atan2(math.sqrt(1 - x * x), x - d)
    outer = np.linspace(outer_from, 2 * math.pi - outer_from, points)
    inner = np.linspace(2 * math.pi - inner_from, inner_from, points)[1:-1]
    return np.concatenate(
        [np.stack([np.cos(outer), np.sin(outer)], 1), np.stack([d + r2 * np.cos(inner), r2 * np.sin(inner)], 1)]
    )


def _heart(points: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    xy = np.stack([x, y], 1)
    xy -= (xy.min(0) + xy.max(0)) / 2  # centred on its box
    return xy / np.linalg.norm(xy, axis=1).max()


# Unit outlines (centre 0, inside the unit circle, y down) of the shapes outside the base world.
_NEW_OUTLINES = {
    "cross": _cross,
    "diamond": lambda: np.array([(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)]),
    "arrow": lambda: np.array([(-1, -0.22), (0.1, -0.22), (0.1, -0.6), (1, 0), (0.1, 0.6), (0.1, 0.22), (-1, 0.22)]),
    "crescent": _crescent,
    "heart": _heart,
}


def star_tips(obj: SceneObject) -> np.ndarray:
    """(5, 2) a star's tips in pixels, from the topmost clockwise (as `STAR_KEYPOINT_NAMES` name them)."""
    tips = shape_outline(obj)[0::2]
    first = int(np.argmin(tips[:, 1]))  # the topmost; in image coordinates the outline runs clockwise
    return np.roll(tips, -first, axis=0)


def _person_joints(rng: np.random.Generator, center_xy: tuple[float, float], height: float) -> np.ndarray:
    """(17, 2) joints of a stick figure facing the viewer (its left is on the image's right)."""
    cx, cy = center_xy
    top = cy - height / 2
    head_r = 0.09 * height
    lean = rng.uniform(-0.15, 0.15)  # torso lean in radians
    neck = np.array([cx + math.sin(lean) * 0.1 * height, top + 2 * head_r + 0.02 * height])
    pelvis = neck + 0.33 * height * np.array([math.sin(lean), math.cos(lean)])
    head = neck + np.array([0.0, -head_r - 0.01 * height])
    side = np.array([math.cos(lean), -math.sin(lean)])  # towards the figure's left (image right)
    shoulder_w, hip_w = 0.11 * height, 0.07 * height
    joints = np.zeros((17, 2))
    joints[0] = head + np.array([0.0, 0.25 * head_r])
    joints[1], joints[2] = head + np.array([0.4, -0.2]) * head_r, head + np.array([-0.4, -0.2]) * head_r
    joints[3], joints[4] = head + np.array([0.95, 0.0]) * head_r, head + np.array([-0.95, 0.0]) * head_r
    joints[5], joints[6] = neck + side * shoulder_w, neck - side * shoulder_w
    joints[11], joints[12] = pelvis + side * hip_w, pelvis - side * hip_w

    def limb(start: np.ndarray, angle: float, length: float) -> np.ndarray:
        # angle 0 points straight down; positive swings towards the figure's left (image right).
        return start + length * np.array([math.sin(angle), math.cos(angle)])

    upper_arm, forearm, thigh, shin = 0.17 * height, 0.15 * height, 0.22 * height, 0.2 * height
    for shoulder, elbow, wrist, sign in ((5, 7, 9, 1.0), (6, 8, 10, -1.0)):
        a = sign * rng.uniform(0.15, 2.6)
        joints[elbow] = limb(joints[shoulder], a, upper_arm)
        joints[wrist] = limb(joints[elbow], a + sign * rng.uniform(-0.9, 0.9), forearm)
    for hip, knee, ankle, sign in ((11, 13, 15, 1.0), (12, 14, 16, -1.0)):
        a = sign * rng.uniform(0.0, 0.45)
        joints[knee] = limb(joints[hip], a, thigh)
        joints[ankle] = limb(joints[knee], a + rng.uniform(-0.3, 0.3), shin)
    return joints


# ---------------------------------------------------------------------------------------------
# Drawing


def _silhouette(obj: SceneObject, size: int) -> np.ndarray:
    canvas = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if obj.category == PERSON:
        joints = np.asarray(obj.joints_xy)
        for a, b in _LIMBS:
            draw.line([tuple(joints[a]), tuple(joints[b])], fill=1, width=obj.line_width)
        draw.polygon([tuple(joints[k]) for k in (5, 6, 12, 11)], fill=1)  # a solid torso
        neck = (joints[5] + joints[6]) / 2
        head = (joints[3] + joints[4]) / 2
        draw.line([tuple(neck), tuple(head)], fill=1, width=obj.line_width)
        r = float(np.linalg.norm(joints[3] - joints[4])) / 2 / 0.95
        draw.ellipse([head[0] - r, head[1] - r, head[0] + r, head[1] + r], fill=1)
    else:
        draw.polygon([tuple(p) for p in shape_outline(obj)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _background_pixels(background: Background, size: int) -> np.ndarray:
    a = np.asarray(background.color_a, dtype=np.float32)
    if background.kind == "plain":
        return np.broadcast_to(a, (size, size, 3)).astype(np.uint8)
    if background.kind == "gradient":
        b = np.asarray(background.color_b, dtype=np.float32)
        coords = np.arange(size, dtype=np.float32) / max(size - 1, 1)
        t = math.cos(background.angle) * coords[None, :] + math.sin(background.angle) * coords[:, None]
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return (a + (b - a) * t[..., None]).astype(np.uint8)
    noise = np.random.default_rng(background.noise_seed).normal(0.0, 14.0, (size, size, 1)).astype(np.float32)
    return np.clip(a + noise, 0, 255).astype(np.uint8)


def render_scene(scene: Scene, silhouettes: np.ndarray | None = None) -> RenderedScene:
    """Draw a scene: background, then the objects back to front.

    Args:
        scene: what to draw.
        silhouettes: (N, S, S) bool, the objects' silhouettes when already known (sampling draws them).
    """
    size = scene.size
    image = np.array(_background_pixels(scene.background, size))
    n = len(scene.objects)
    masks = np.zeros((n, size, size), dtype=bool) if silhouettes is None else np.asarray(silhouettes, dtype=bool)
    for i, obj in enumerate(scene.objects):
        if silhouettes is None:
            masks[i] = _silhouette(obj, size)
        image[masks[i]] = obj.rgb
    visible = masks.copy()
    covered = np.zeros((size, size), dtype=bool)
    for i in range(n - 1, -1, -1):
        visible[i] &= ~covered
        covered |= masks[i]
    keypoints = np.zeros((n, 17, 3))
    for i, obj in enumerate(scene.objects):
        if obj.category == PERSON:
            keypoints[i] = _keypoint_visibility(np.asarray(obj.joints_xy), masks[i + 1 :].any(axis=0), size)
    return RenderedScene(image, masks, visible, keypoints)


def _keypoint_visibility(joints: np.ndarray, covered: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((len(joints), 3))
    out[:, :2] = joints
    cols = np.clip(np.floor(joints[:, 0]).astype(int), 0, size - 1)
    rows = np.clip(np.floor(joints[:, 1]).astype(int), 0, size - 1)
    inside = (joints >= 0).all(axis=1) & (joints < size).all(axis=1)
    out[:, 2] = np.where(inside, np.where(covered[rows, cols], 1, 2), 0)
    out[~inside, :2] = 0.0
    return out


# ---------------------------------------------------------------------------------------------
# Sampling


def _muted_color(rng: np.random.Generator) -> tuple[int, int, int]:
    grey = rng.uniform(70, 200)
    tint = rng.uniform(-18, 18, size=3)
    return tuple(int(v) for v in np.clip(grey + tint, 0, 255))


def sample_background(rng: np.random.Generator) -> Background:
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    return Background(
        kind=kind,
        color_a=_muted_color(rng),
        color_b=_muted_color(rng),
        angle=float(rng.uniform(0, 2 * np.pi)),
        noise_seed=int(rng.integers(2**31)),
    )


def _sample_object(rng: np.random.Generator, config: ShapesWorldConfig, train: bool) -> SceneObject:
    size = config.image_size
    shapes = config.shapes
    category = PERSON if rng.random() < config.person_probability else shapes[rng.integers(len(shapes))]
    colors = [c for c in COLORS if not (train and (c, category) in config.holdout_pairs)]
    if not colors:
        raise ValueError(f"every colour of {category!r} is held out of the train split")
    color = colors[rng.integers(len(colors))]
    rgb = tuple(int(v) for v in np.clip(np.asarray(COLORS[color]) + rng.integers(-18, 19, size=3), 0, 255))
    size_class = SIZES[rng.integers(len(SIZES))]
    low, high = (PERSON_EXTENT if category == PERSON else SHAPE_EXTENT)[size_class]
    extent = float(rng.uniform(low, high) * size)
    if category == PERSON:
        margin_x, margin_y = 0.45 * extent, 0.5 * extent + 2
    else:
        margin_x = margin_y = extent / 2 + 1
    center = (float(rng.uniform(margin_x, size - margin_x)), float(rng.uniform(margin_y, size - margin_y)))
    if category == PERSON:
        joints = _person_joints(rng, center, extent)
        width = max(2, round(extent / 22))
        return SceneObject(category, color, rgb, size_class, center, extent, 0.0, tuple(map(tuple, joints)), width)
    rotation = 0.0 if category == "circle" else float(rng.uniform(-np.pi / 12, np.pi / 12))
    return SceneObject(category, color, rgb, size_class, center, extent, rotation)


_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _pieces_and_holes(mask: np.ndarray) -> tuple[int, int]:
    """Connected parts of a mask and holes in it (background parts that do not reach the border)."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    padded[1:-1, 1:-1] = mask
    _, parts = ndimage.label(padded, _FOUR_CONNECTED)
    _, background_parts = ndimage.label(~padded, _FOUR_CONNECTED)
    return parts, background_parts - 1


def _crop(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def sample_scene(rng: np.random.Generator, config: ShapesWorldConfig, train: bool = True) -> Scene:
    """Sample a scene (see `sample_scene_and_silhouettes`)."""
    return sample_scene_and_silhouettes(rng, config, train)[0]


def sample_scene_and_silhouettes(
    rng: np.random.Generator, config: ShapesWorldConfig, train: bool = True
) -> tuple[Scene, np.ndarray]:
    """Sample a scene and its objects' silhouettes.

    Objects are added one at a time on top of the others, and a placement is redrawn when it would
    hide too much of an object below it, cut it in two or punch a hole in it.

    Args:
        rng: the generator (the scene is a function of its state).
        config: sampling settings.
        train: whether held-out colour/shape pairs are excluded.
    """
    size = config.image_size
    background = sample_background(rng)
    wanted = int(rng.integers(config.min_objects, config.max_objects + 1))
    objects: list[SceneObject] = []
    masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    for _ in range(wanted):
        for _attempt in range(25):
            obj = _sample_object(rng, config, train)
            mask = _silhouette(obj, size)
            if mask.sum() < 4 or _pieces_and_holes(mask[_crop(mask)])[0] != 1:
                continue
            if all(_still_fine(m, v & ~mask, config) for m, v in zip(masks, visible, strict=True) if (v & mask).any()):
                visible = [v & ~mask for v in visible]
                objects.append(obj)
                masks.append(mask)
                visible.append(mask)
                break
    silhouettes = np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool)
    return Scene(size, background, tuple(objects)), silhouettes


def _still_fine(full: np.ndarray, remaining: np.ndarray, config: ShapesWorldConfig) -> bool:
    """Whether an object whose silhouette is `full` and whose visible part would be `remaining` stays
    well visible: enough of it, one piece, and no hole it did not have."""
    if remaining.sum() < config.min_visible_fraction * full.sum():
        return False
    window = _crop(full)
    parts, holes = _pieces_and_holes(remaining[window])
    return parts == 1 and holes <= _pieces_and_holes(full[window])[1]
