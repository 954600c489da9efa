"""Polygons and masks: boundary tracing, canonical resampling, rasterisation, RLE.

Coordinates are pixels, x right and y down; pixel (i, j) covers [j, j + 1) x [i, i + 1), so a
traced boundary runs along pixel edges. "Clockwise" means clockwise as seen on screen, which is a
positive signed area under the shoelace formula in these coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

# Directions on screen: east, south, west, north; a right turn is +1.
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def signed_area(polygon_xy: np.ndarray) -> float:
    """Shoelace area of a closed polygon (P, 2); positive when clockwise on screen."""
    x, y = polygon_xy[:, 0], polygon_xy[:, 1]
    cross = float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) + float(x[-1] * y[0] - x[0] * y[-1])
    return 0.5 * cross


def trace_boundaries(mask: np.ndarray) -> list[np.ndarray]:
    """Every boundary loop of a binary mask, along pixel edges.

    Outer boundaries come out clockwise (positive area), holes anticlockwise. Pixels that touch
    only at a corner belong to different loops (4-connectivity). Collinear vertices are removed.

    Args:
        mask: (H, W) bool.

    Returns:
        Loops as (P, 2) float64 arrays of pixel-corner coordinates, P >= 4.
    """
    mask = np.asarray(mask, dtype=bool)
    m = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    m[1:-1, 1:-1] = mask
    inside = m[1:-1, 1:-1]
    width1 = inside.shape[1] + 1  # vertices per row; vertex (x, y) is numbered y * (W + 1) + x
    # Boundary edges, each keeping the inside on its right: (start vertex, direction).
    starts, directions = [], []
    for direction, (outside, di, dj) in enumerate(
        (
            (m[:-2, 1:-1], 0, 0),  # top edges run east from (j, i)
            (m[1:-1, 2:], 0, 1),  # right edges run south from (j + 1, i)
            (m[2:, 1:-1], 1, 1),  # bottom edges run west from (j + 1, i + 1)
            (m[1:-1, :-2], 1, 0),  # left edges run north from (j, i + 1)
        )
    ):
        i, j = np.nonzero(inside & ~outside)
        starts.append((i + di) * width1 + j + dj)
        directions.append(np.full(len(i), direction))
    start = np.concatenate(starts)
    direction = np.concatenate(directions)
    if len(start) == 0:
        return []
    end = start + np.array([dx + dy * width1 for dx, dy in _STEPS])[direction]
    # The edge that follows each edge: the one leaving its end vertex, preferring a right turn, then
    # straight on, then left. Only at a pinch (pixels touching at a corner) is there a choice, and
    # the right turn splits the two pixels into separate loops.
    table = np.full((len(inside) + 1) * width1 * 4, -1)
    table[start * 4 + direction] = np.arange(len(start))
    right, ahead, left = (table[end * 4 + (direction + turn) % 4] for turn in (1, 0, 3))
    successor = np.where(right >= 0, right, np.where(ahead >= 0, ahead, left))
    corner = np.zeros(len(start), dtype=bool)  # whether an edge's start vertex is a corner
    corner[successor] = direction[successor] != direction
    follow = successor.tolist()
    seen = bytearray(len(start))
    loops = []
    # Starting each loop at its smallest vertex makes it start at its top-left corner.
    for first in np.lexsort((direction, start)).tolist():
        if seen[first]:
            continue
        cycle, edge = [], first
        while not seen[edge]:
            seen[edge] = 1
            cycle.append(edge)
            edge = follow[edge]
        cycle = np.asarray(cycle)
        vertices = start[cycle[corner[cycle]]]
        loops.append(np.stack([vertices % width1, vertices // width1], axis=1).astype(np.float64))
    return loops


def mask_to_polygons(mask: np.ndarray, tolerance_px: float = 0.0, min_area_px: float = 1.0) -> list[np.ndarray]:
    """Outer boundaries of the connected parts of a mask (holes are not represented).

    Args:
        mask: (H, W) bool.
        tolerance_px: Douglas-Peucker tolerance; 0 keeps every corner of the pixel boundary.
        min_area_px: parts with a smaller area are left out.

    Returns:
        Clockwise polygons (P, 2) in pixel-corner coordinates, largest first.
    """
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return []
    # Trace inside the bounding box only: the work then scales with the object, not the image.
    window = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    origin = np.array([cols[0], rows[0]], dtype=np.float64)
    outer = [p + origin for p in trace_boundaries(window) if signed_area(p) >= min_area_px]
    outer.sort(key=signed_area, reverse=True)
    if tolerance_px > 0:
        outer = [simplify_polygon(p, tolerance_px) for p in outer]
    return outer


def simplify_polygon(polygon_xy: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Douglas-Peucker simplification of a closed polygon, keeping at least 3 points.

    Args:
        polygon_xy: (P, 2) closed polygon (the last point is not repeated).
        tolerance_px: largest distance in pixels a removed point may lie from the result.
    """
    n = len(polygon_xy)
    if n <= 3:
        return polygon_xy
    # Split the loop at the point farthest from the first, then simplify the two chains.
    far = int(np.argmax(np.linalg.norm(polygon_xy - polygon_xy[0], axis=1)))
    keep = np.zeros(n + 1, dtype=bool)
    keep[[0, far, n]] = True
    chain = np.concatenate([polygon_xy, polygon_xy[:1]])
    stack = [(0, far), (far, n)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        start, end = chain[a], chain[b]
        segment = end - start
        length = float(np.hypot(*segment))
        between = chain[a + 1 : b] - start
        if length == 0:
            distance = np.hypot(between[:, 0], between[:, 1])
        else:
            distance = np.abs(segment[0] * between[:, 1] - segment[1] * between[:, 0]) / length
        k = int(np.argmax(distance))
        if distance[k] > tolerance_px:
            keep[a + 1 + k] = True
            stack += [(a, a + 1 + k), (a + 1 + k, b)]
    result = chain[:-1][keep[:-1]]
    return result if len(result) >= 3 else polygon_xy[np.linspace(0, n - 1, 3).astype(int)]


def resample_polygon(polygon_xy: np.ndarray, num_points: int) -> np.ndarray:
    """The canonical N-point form of a closed polygon.

    Points are spaced evenly by arc length along the boundary, clockwise, starting from the
    top-most vertex (the left-most of those on ties), so that the same outline always gives the
    same targets.

    Args:
        polygon_xy: (P, 2) closed polygon, P >= 1, any orientation.
        num_points: N >= 3.

    Returns:
        (N, 2) float64 points in pixels.
    """
    if num_points < 3:
        raise ValueError(f"a polygon needs at least 3 points, got num_points={num_points}")
    poly = np.asarray(polygon_xy, dtype=np.float64).reshape(-1, 2)
    if len(poly) == 0:
        raise ValueError("cannot resample an empty polygon")
    if signed_area(poly) < 0:
        poly = poly[::-1]
    start = np.lexsort((poly[:, 0], poly[:, 1]))[0]
    poly = np.roll(poly, -start, axis=0)
    closed = np.concatenate([poly, poly[:1]])
    lengths = np.hypot(*np.diff(closed, axis=0).T)
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
    perimeter = cumulative[-1]
    if perimeter == 0:
        return np.repeat(poly[:1], num_points, axis=0)
    targets = np.arange(num_points) * (perimeter / num_points)
    x = np.interp(targets, cumulative, closed[:, 0])
    y = np.interp(targets, cumulative, closed[:, 1])
    return np.stack([x, y], axis=1)


def polygons_to_rle(polygons_xy: Sequence[np.ndarray], height: int, width: int) -> dict:
    """Rasterise polygons (their union) the way COCO evaluation does, as compressed RLE."""
    flat = [np.asarray(p, dtype=np.float64).reshape(-1) for p in polygons_xy]
    flat = [p.tolist() for p in flat if len(p) >= 6]
    if not flat:
        return mask_to_rle(np.zeros((height, width), dtype=bool))
    return mask_utils.merge(mask_utils.frPyObjects(flat, height, width))


def polygons_to_mask(polygons_xy: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of the union of polygons, rasterised as pycocotools does."""
    return mask_utils.decode(polygons_to_rle(polygons_xy, height, width)).astype(bool)


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of an (H, W) bool mask, with `counts` as a str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """(H, W) bool mask from COCO RLE (compressed str/bytes counts, or uncompressed list counts)."""
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects(rle, height, width)
    elif isinstance(counts, str):
        rle = {"size": [height, width], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def mask_to_polygon(mask: np.ndarray, num_points: int) -> np.ndarray | None:
    """The canonical N-point polygon of a mask's largest part, or None for an empty mask."""
    polygons = mask_to_polygons(mask)
    return resample_polygon(polygons[0], num_points) if polygons else None
