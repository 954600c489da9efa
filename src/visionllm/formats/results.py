"""Typed results: one canonical detection type, free text, and what decoding dropped.

Every coordinate here is in pixels of the input image: x to the right, y down, the pixel (i, j)
covering [j, j + 1) x [i, i + 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True, eq=False)
class Detections:
    """Objects found in one image, validated on construction.

    Attributes:
        boxes_xyxy_px: (N, 4) float64 corners (x1, y1, x2, y2) in pixels, with x1 <= x2 and y1 <= y2.
        scores: (N,) float64 in [0, 1]; results are ranked by it.
        class_names: N names, each one of the classes the instruction bound.
        polygons_xy_px: None, or N arrays of shape (P_i, 2) with P_i >= 3: boundary points in pixels.
        keypoints_xyv_px: None, or (N, K, 3): x and y in pixels, and a visibility flag per point
            (0: the point was predicted invisible and its x, y are meaningless; 2: predicted visible).
        masks: None, or (N, H, W) bool masks at image resolution.
    """

    boxes_xyxy_px: np.ndarray
    scores: np.ndarray
    class_names: tuple[str, ...]
    polygons_xy_px: tuple[np.ndarray, ...] | None = None
    keypoints_xyv_px: np.ndarray | None = None
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes_xyxy_px, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        names = tuple(str(name) for name in self.class_names)
        n = len(boxes)
        if len(scores) != n or len(names) != n:
            raise ValueError(f"Detections: {n} boxes but {len(scores)} scores and {len(names)} class names")
        if not np.isfinite(boxes).all():
            raise ValueError("Detections: boxes must be finite")
        if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise ValueError("Detections: boxes must be (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2")
        if ((scores < 0) | (scores > 1) | ~np.isfinite(scores)).any():
            raise ValueError("Detections: scores must lie in [0, 1]")
        object.__setattr__(self, "boxes_xyxy_px", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_names", names)
        if self.polygons_xy_px is not None:
            polygons = tuple(np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in self.polygons_xy_px)
            if len(polygons) != n:
                raise ValueError(f"Detections: {n} boxes but {len(polygons)} polygons")
            if any(len(p) < 3 or not np.isfinite(p).all() for p in polygons):
                raise ValueError("Detections: every polygon needs at least 3 finite points")
            object.__setattr__(self, "polygons_xy_px", polygons)
        if self.keypoints_xyv_px is not None:
            keypoints = np.asarray(self.keypoints_xyv_px, dtype=np.float64)
            if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3:
                raise ValueError(f"Detections: keypoints must have shape ({n}, K, 3), got {keypoints.shape}")
            object.__setattr__(self, "keypoints_xyv_px", keypoints)
        if self.masks is not None:
            masks = np.asarray(self.masks, dtype=bool)
            if masks.ndim != 3 or masks.shape[0] != n:
                raise ValueError(f"Detections: masks must have shape ({n}, H, W), got {masks.shape}")
            object.__setattr__(self, "masks", masks)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), ())

    def __len__(self) -> int:
        return len(self.boxes_xyxy_px)

    def select(self, index: Sequence[int] | np.ndarray) -> Detections:
        """The detections at `index` (integer positions or a boolean mask), in that order."""
        index = np.arange(len(self))[np.asarray(index)] if len(self) else np.zeros(0, dtype=int)
        return Detections(
            self.boxes_xyxy_px[index],
            self.scores[index],
            tuple(self.class_names[i] for i in index),
            None if self.polygons_xy_px is None else tuple(self.polygons_xy_px[i] for i in index),
            None if self.keypoints_xyv_px is None else self.keypoints_xyv_px[index],
            None if self.masks is None else self.masks[index],
        )

    def sorted_by_score(self) -> Detections:
        return self.select(np.argsort(-self.scores, kind="stable"))

    def to_coco(self, image_id: int, category_ids: Mapping[str, int]) -> list[dict[str, Any]]:
        """COCO result entries (`bbox` as x, y, w, h), one per detection, for pycocotools' COCOeval.

        Args:
            image_id: the image's id in the ground-truth file.
            category_ids: class name -> COCO category id.
        """
        missing = sorted(set(self.class_names) - set(category_ids))
        if missing:
            raise KeyError(f"no COCO category id for class name(s) {missing}; known: {sorted(category_ids)}")
        entries = []
        for i in range(len(self)):
            x1, y1, x2, y2 = self.boxes_xyxy_px[i].tolist()
            entry: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": int(category_ids[self.class_names[i]]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(self.scores[i]),
            }
            if self.polygons_xy_px is not None:
                entry["segmentation"] = [self.polygons_xy_px[i].reshape(-1).tolist()]
            elif self.masks is not None:
                rle = mask_utils.encode(np.asfortranarray(self.masks[i].astype(np.uint8)))
                entry["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            if self.keypoints_xyv_px is not None:
                keypoints = self.keypoints_xyv_px[i].copy()
                keypoints[keypoints[:, 2] == 0, :2] = 0.0
                entry["keypoints"] = keypoints.reshape(-1).tolist()
            entries.append(entry)
        return entries

    def to_json(self) -> list[dict[str, Any]]:
        """Plain JSON-able objects, for the CLI and the server."""
        out = []
        for i in range(len(self)):
            item: dict[str, Any] = {
                "class_name": self.class_names[i],
                "score": round(float(self.scores[i]), 4),
                "box_xyxy_px": [round(v, 2) for v in self.boxes_xyxy_px[i].tolist()],
            }
            if self.polygons_xy_px is not None:
                item["polygon_xy_px"] = np.round(self.polygons_xy_px[i], 2).tolist()
            elif self.masks is not None:  # v2's masks, as COCO RLE of the image's size
                rle = mask_utils.encode(np.asfortranarray(self.masks[i].astype(np.uint8)))
                item["mask_rle"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            if self.keypoints_xyv_px is not None:
                item["keypoints_xyv_px"] = np.round(self.keypoints_xyv_px[i], 2).tolist()
            out.append(item)
        return out


@dataclass(frozen=True, eq=False)
class GeneratedImage:
    """An image the model made (text-to-image) or edited.

    Attributes:
        pixels: (H, W, 3) uint8 RGB.
        prompt: what it was asked to show (the description, or the edit instruction).
        seed: the seed of its starting noise (the same seed, prompt and model give the same image).
    """

    pixels: np.ndarray
    prompt: str
    seed: int

    def __post_init__(self) -> None:
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 3 or self.pixels.shape[2] != 3:
            raise ValueError(f"pixels must be (H, W, 3) uint8, not {self.pixels.shape} {self.pixels.dtype}")

    def png(self) -> bytes:
        """The image as PNG bytes."""
        from io import BytesIO

        from PIL import Image

        out = BytesIO()
        Image.fromarray(self.pixels).save(out, format="PNG")
        return out.getvalue()

    def to_json(self) -> dict[str, Any]:
        """The image as a PNG data URL, with its prompt, seed and size."""
        import base64

        height, width = self.pixels.shape[:2]
        url = "data:image/png;base64," + base64.b64encode(self.png()).decode("ascii")
        return {"image": url, "prompt": self.prompt, "seed": self.seed, "width": width, "height": height}


@dataclass(frozen=True)
class TextAnswer:
    """A free-text answer (caption, VQA answer, chat reply).

    Attributes:
        text: the answer.
        routed: for a v2 reply that wrote routing tokens, what their decoders found, by routing token ("[DET]",
            "[SEG]", "[GRD]", "[POSE]").
        images: the images its [GEN] and [EDIT] calls made, in the reply's order.
    """

    text: str
    routed: dict[str, Detections] = field(default_factory=dict)
    images: tuple[GeneratedImage, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text}
        if self.routed:
            out["routed"] = {route: found.to_json() for route, found in self.routed.items()}
        if self.images:
            out["images"] = [image.to_json() for image in self.images]
        return out


@dataclass(frozen=True)
class SegmentationMap:
    """A semantic segmentation: one class per pixel.

    Attributes:
        labels: (H, W) int64 at the image's size: 0 for background, i + 1 for class_names[i].
        class_names: the classes the request asked for.
    """

    labels: np.ndarray
    class_names: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """Each class's pixels as COCO RLE, and the classes in the order of the labels."""
        masks = {}
        for index, name in enumerate(self.class_names, start=1):
            rle = mask_utils.encode(np.asfortranarray((self.labels == index).astype(np.uint8)))
            masks[name] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
        return {"class_names": list(self.class_names), "masks_rle": masks}


Prediction = Detections | TextAnswer | SegmentationMap | GeneratedImage


@dataclass(frozen=True)
class Dropped:
    """A part of the model output that did not parse, and why.

    Attributes:
        slot: index of the output slot (object group) it came from, or None for the whole output.
        tokens: the tokens that were dropped.
        reason: what was wrong, in words.
    """

    slot: int | None
    tokens: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Decoded:
    """What decoding produced: the typed prediction plus everything it had to drop."""

    prediction: Prediction
    dropped: tuple[Dropped, ...] = field(default=())

    @property
    def clean(self) -> bool:
        return not self.dropped
