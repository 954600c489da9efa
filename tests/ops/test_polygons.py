import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from visionllm.ops.polygons import (
    mask_to_polygon,
    mask_to_polygons,
    mask_to_rle,
    polygons_to_mask,
    resample_polygon,
    rle_to_mask,
    signed_area,
    simplify_polygon,
    trace_boundaries,
)


def drawn(shape: str, size: int = 64) -> np.ndarray:
    canvas = Image.new("1", (size, size))
    draw = ImageDraw.Draw(canvas)
    if shape == "ellipse":
        draw.ellipse([8, 12, 50, 40], fill=1)
    elif shape == "triangle":
        draw.polygon([(10, 50), (32, 6), (55, 58)], fill=1)
    elif shape == "star":
        angles = np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 28, 16)
        draw.polygon([(32 + r * np.cos(a), 32 + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)], fill=1)
    return np.asarray(canvas, dtype=bool)


def test_trace_square_is_clockwise_with_four_corners():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    (loop,) = trace_boundaries(mask)
    assert loop.tolist() == [[3, 2], [7, 2], [7, 5], [3, 5]]
    assert signed_area(loop) == 12


def test_trace_hole_is_anticlockwise_and_corner_touching_pixels_are_separate():
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    areas = sorted(signed_area(p) for p in trace_boundaries(ring))
    assert areas == [-1, 25]
    diagonal = np.zeros((3, 3), bool)
    diagonal[0, 0] = diagonal[1, 1] = True
    assert [signed_area(p) for p in trace_boundaries(diagonal)] == [1, 1]


@pytest.mark.parametrize("shape", ["ellipse", "triangle", "star"])
def test_mask_polygon_mask_round_trip_is_exact(shape):
    mask = drawn(shape)
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 1
    np.testing.assert_array_equal(polygons_to_mask(polygons, *mask.shape), mask)


def test_mask_to_polygons_orders_parts_by_area_and_drops_holes():
    mask = np.zeros((20, 20), bool)
    mask[1:4, 1:4] = True
    mask[8:18, 8:18] = True
    mask[12, 12] = False
    polygons = mask_to_polygons(mask)
    assert [signed_area(p) for p in polygons] == [100, 9]
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


@pytest.mark.parametrize("shape", ["ellipse", "triangle", "star"])
def test_resampled_polygons_approximate_the_mask_and_improve_with_points(shape):
    mask = drawn(shape)
    ious = []
    for n in (8, 16, 32):
        points = mask_to_polygon(mask, n)
        assert points.shape == (n, 2)
        back = polygons_to_mask([points], *mask.shape)
        ious.append((back & mask).sum() / (back | mask).sum())
    assert ious[-1] > 0.9
    assert ious[-1] >= ious[0]


def test_resample_is_canonical_start_and_orientation():
    square = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0]])  # anticlockwise, from top-left
    for shift in range(4):
        for poly in (np.roll(square, shift, axis=0), np.roll(square[::-1], shift, axis=0)):
            out = resample_polygon(poly, 8)
            np.testing.assert_allclose(out[0], [10, 10])
            np.testing.assert_allclose(out[1], [20, 10])  # clockwise on screen: along the top edge first
            assert signed_area(out) > 0


def test_resample_spacing_is_even():
    square = np.array([[0.0, 0.0], [40.0, 0.0], [40.0, 40.0], [0.0, 40.0]])
    out = resample_polygon(square, 16)
    steps = np.linalg.norm(np.diff(np.concatenate([out, out[:1]]), axis=0), axis=1)
    np.testing.assert_allclose(steps, 10.0)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_resample_refuses_fewer_than_three_points(n):
    with pytest.raises(ValueError, match="at least 3"):
        resample_polygon(np.zeros((4, 2)), n)


def test_degenerate_polygon_resamples_to_one_point():
    out = resample_polygon(np.array([[5.0, 5.0]]), 4)
    np.testing.assert_array_equal(out, np.full((4, 2), 5.0))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_random_masks_round_trip_through_rle_and_polygons(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((24, 24)) < 0.4
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(mask)), mask)
    filled = polygons_to_mask(mask_to_polygons(mask), 24, 24)
    assert (filled | ~mask).all()  # every pixel of the mask is inside some outer boundary


def test_uncompressed_rle_decodes():
    mask = np.zeros((4, 3), bool)
    mask[1:3, 1] = True
    counts = [5, 2, 5]  # column-major runs
    np.testing.assert_array_equal(rle_to_mask({"size": [4, 3], "counts": counts}), mask)


def test_simplify_keeps_corners_and_removes_staircase_within_tolerance():
    polygons = mask_to_polygons(drawn("triangle"))
    simple = simplify_polygon(polygons[0], 1.0)
    assert 3 <= len(simple) < len(polygons[0])
    assert mask_to_polygons(drawn("triangle"), tolerance_px=1.0)[0].shape == simple.shape
