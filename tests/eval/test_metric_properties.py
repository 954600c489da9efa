"""Property-based checks of the metrics (the table-driven cases live in test_metrics.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visionllm.eval.metrics import coco_metrics, grounding_precision, mean_iou, vqa_accuracy
from visionllm.ops.boxes import box_iou

coord = st.floats(0, 100, allow_nan=False)


@st.composite
def boxes(draw, min_size=1, max_size=8):
    n = draw(st.integers(min_size, max_size))
    out = []
    for _ in range(n):
        x1, y1 = draw(coord), draw(coord)
        w, h = draw(st.floats(1, 50)), draw(st.floats(1, 50))
        out.append([x1, y1, x1 + w, y1 + h])
    return np.array(out)


@settings(max_examples=100, deadline=None)
@given(boxes(), boxes())
def test_iou_is_symmetric_bounded_and_one_on_itself(a, b):
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b))
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    np.testing.assert_allclose(iou, box_iou(b, a).T)
    np.testing.assert_allclose(np.diag(box_iou(a, a)), 1.0)


@settings(max_examples=25, deadline=None)
@given(boxes(max_size=6), st.permutations(list(range(6))))
def test_ground_truth_as_predictions_scores_ap_one(gt_boxes, order):
    annotations = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1 + i % 2,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1),
            "iscrowd": 0,
        }
        for i, (x1, y1, x2, y2) in enumerate(gt_boxes.tolist())
    ]
    gt = {
        "images": [{"id": 1, "width": 160, "height": 160}],
        "categories": [{"id": 1}, {"id": 2}],
        "annotations": annotations,
    }
    ranked = [annotations[i] for i in order if i < len(annotations)]
    results = [{**a, "score": 1.0 - 0.1 * k} for k, a in enumerate(ranked)]
    assert coco_metrics(gt, results, "bbox")["AP"] == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(boxes(), st.data())
def test_grounding_precision_counts_hits_and_ignores_order(gt, data):
    shifts = data.draw(st.lists(st.floats(-30, 30), min_size=len(gt), max_size=len(gt)))
    preds = [np.add(box, [s, 0, s, 0]) if s < 25 else None for box, s in zip(gt, shifts, strict=True)]
    hits = [p is not None and box_iou(p, g)[0, 0] >= 0.5 for p, g in zip(preds, gt, strict=True)]
    assert grounding_precision(preds, gt) == pytest.approx(np.mean(hits))
    perm = data.draw(st.permutations(list(range(len(gt)))))
    assert grounding_precision([preds[i] for i in perm], gt[perm]) == pytest.approx(np.mean(hits))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10), st.sampled_from(["2", "red", "circle", "yes"]))
def test_vqa_accuracy_follows_the_leave_one_out_formula(matches, answer):
    answers = [answer] * matches + [f"other{i}" for i in range(10 - matches)]
    annotation = {
        "question_id": 1,
        "answer_type": "other",
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }
    expected = (matches * min(1, (matches - 1) / 3) + (10 - matches) * min(1, matches / 3)) / 10 if matches else 0.0
    assert vqa_accuracy({1: answer}, [annotation])["accuracy"] == pytest.approx(expected)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 6))
def test_mean_iou_is_one_for_perfect_and_bounded_otherwise(seed, classes):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, classes, (12, 12))
    assert mean_iou([target], [target], classes)["mIoU"] == pytest.approx(1.0)
    noisy = np.where(rng.random((12, 12)) < 0.3, rng.integers(0, classes, (12, 12)), target)
    score = mean_iou([noisy], [target], classes)
    assert 0 <= score["mIoU"] <= 1 and 0 <= score["pixel_accuracy"] <= 1
