"""Tests of the numpy box functions: conversions, areas, IoU and clipping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from visionllm.ops.boxes import box_area, box_iou, clip_boxes, nms, xywh_to_xyxy, xyxy_to_xywh

BOXES_XYXY = np.array([[0.0, 0.0, 10.0, 20.0], [2.5, 3.5, 4.0, 9.0], [5.0, 5.0, 5.0, 5.0]])
BOXES_XYWH = np.array([[0.0, 0.0, 10.0, 20.0], [2.5, 3.5, 1.5, 5.5], [5.0, 5.0, 0.0, 0.0]])


def test_conversions_match_a_hand_written_table() -> None:
    np.testing.assert_allclose(xyxy_to_xywh(BOXES_XYXY), BOXES_XYWH)
    np.testing.assert_allclose(xywh_to_xyxy(BOXES_XYWH), BOXES_XYXY)


def test_conversions_round_trip() -> None:
    boxes = np.random.default_rng(0).uniform(0, 100, size=(32, 4))
    np.testing.assert_allclose(xyxy_to_xywh(xywh_to_xyxy(boxes)), boxes)
    np.testing.assert_allclose(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes)


def test_a_single_box_becomes_one_row() -> None:
    assert xywh_to_xyxy([1, 2, 3, 4]).tolist() == [[1.0, 2.0, 4.0, 6.0]]
    assert box_iou([0, 0, 1, 1], np.zeros((0, 4))).shape == (1, 0)


@pytest.mark.parametrize("bad", [np.zeros((3, 5)), np.zeros((2, 2, 4)), [1.0, 2.0, 3.0]])
def test_wrong_shapes_raise(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_area(bad)


@pytest.mark.parametrize(
    ("box", "area"),
    [
        ([0, 0, 10, 20], 200.0),  # continuous coordinates: no "+1"
        ([2.5, 3.5, 4.0, 9.0], 1.5 * 5.5),
        ([5, 5, 5, 5], 0.0),  # a point
        ([5, 5, 3, 8], 0.0),  # x2 < x1: degenerate, not negative
    ],
)
def test_box_area(box: list[float], area: float) -> None:
    assert box_area(box)[0] == pytest.approx(area)


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),  # identical
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # disjoint
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # sharing an edge only
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),  # intersection 1, union 4 + 4 - 1
        ([0, 0, 10, 10], [0, 0, 6, 10], 0.6),  # contained: 60 / 100
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([3, 3, 3, 3], [3, 3, 3, 3], 0.0),  # two degenerate boxes: empty union, IoU 0 and no NaN
    ],
)
def test_box_iou_of_pairs(a: list[float], b: list[float], iou: float) -> None:
    assert box_iou(a, b)[0, 0] == pytest.approx(iou)
    assert box_iou(b, a)[0, 0] == pytest.approx(iou)


def test_box_iou_is_pairwise() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]], dtype=float)
    b = np.array([[0, 0, 10, 10], [1, 1, 3, 3], [50, 50, 60, 60]], dtype=float)
    expected = np.array([[1.0, 4 / 100, 0.0], [4 / 100, 1 / 7, 0.0]])
    np.testing.assert_allclose(box_iou(a, b), expected)


@pytest.mark.parametrize(
    ("box", "clipped"),
    [
        ([-5, -5, 50, 50], [0, 0, 40, 30]),
        ([10, 10, 20, 20], [10, 10, 20, 20]),  # inside: unchanged
        ([45, 35, 60, 70], [40, 30, 40, 30]),  # outside: degenerate, kept
    ],
)
def test_clip_boxes(box: list[float], clipped: list[float]) -> None:
    assert clip_boxes(box, width=40, height=30).tolist() == [clipped]


def test_functions_do_not_modify_their_input() -> None:
    boxes = BOXES_XYXY.copy()
    clip_boxes(boxes, 3, 3)
    xyxy_to_xywh(boxes)
    box_iou(boxes, boxes)
    np.testing.assert_array_equal(boxes, BOXES_XYXY)


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9], [21, 20, 31, 30]], float)
    scores = np.array([0.8, 0.9, 0.5, 0.3, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [1, 4]
    assert nms(boxes, scores, 0.95).tolist() == [1, 0, 4, 2, 3]  # nothing overlaps that much
    labels = np.array(["a", "b", "a", "a", "a"])
    assert nms(boxes, scores, 0.5, labels).tolist() == [1, 0, 4]  # a box only suppresses its own class


def test_nms_edge_cases():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    assert nms([[0, 0, 1, 1], [0, 0, 1, 1]], [0.5, 0.5], 0.5).tolist() == [0]  # ties keep the earlier box
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        nms([[0, 0, 1, 1], [0, 0, 1, 1]], [0.5], 0.5)


@given(st.integers(0, 12), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_nms_leaves_no_kept_pair_above_the_threshold(n, threshold, seed):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 50, (n, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(1, 30, (n, 2))], axis=1)
    keep = nms(boxes, rng.uniform(size=n), threshold)
    iou = box_iou(boxes[keep], boxes[keep])
    np.fill_diagonal(iou, 0.0)
    assert (iou <= threshold).all()
    assert len(set(keep.tolist())) == len(keep) and (n == 0 or len(keep) >= 1)
