"""Tests of the standard metrics against cases computed by hand."""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from visionllm.eval import metrics
from visionllm.eval.metrics import (
    caption_metrics,
    coco_metrics,
    grounding_precision,
    interactive_iou,
    mask_iou,
    mean_iou,
    vqa_accuracy,
)
from visionllm.eval.vqa_normalize import normalize_vqa_answer

# --------------------------------------------------------------------------------------------------
# COCO: tiny ground truths built here. Every object is 10 x 10 px or 40 x 40 px, so "small" or
# "medium"; the other area ranges have no ground truth and COCOeval reports them as -1.
# --------------------------------------------------------------------------------------------------

CATEGORIES = [{"id": 1, "name": "square"}]


def box_gt(num_images: int = 1) -> dict[str, Any]:
    """One 10 x 10 px box at (0, 0) per image; no "info" or "licenses" keys."""
    return {
        "images": [{"id": i, "width": 100, "height": 100} for i in range(1, num_images + 1)],
        "categories": CATEGORIES,
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}
            for i in range(1, num_images + 1)
        ],
    }


def box_result(x: float, y: float, w: float, h: float, score: float, image_id: int = 1) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": 1, "bbox": [x, y, w, h], "score": score}


# AP averages over the IoU thresholds 0.50, 0.55, ..., 0.95; a single object matched with IoU u
# passes the thresholds t <= u (pycocotools matches when IoU >= t).
@pytest.mark.parametrize(
    ("results", "expected"),
    [
        pytest.param(
            [box_result(0, 0, 10, 10, 0.9)], {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR100": 1.0}, id="perfect"
        ),
        pytest.param([], {"AP": 0.0, "AP50": 0.0, "AR100": 0.0}, id="no-results"),
        # IoU 58/100 lies between the thresholds 0.55 and 0.60: 2 of 10 thresholds pass.
        pytest.param(
            [box_result(0, 0, 5.8, 10, 0.9)], {"AP": 0.2, "AP50": 1.0, "AP75": 0.0, "AR100": 0.2}, id="iou-0.58"
        ),
        # IoU exactly 0.6 passes the 0.60 threshold too (>=): 3 of 10, not 2.
        pytest.param([box_result(0, 0, 6, 10, 0.9)], {"AP": 0.3, "AP50": 1.0, "AP75": 0.0}, id="iou-0.60-boundary"),
        # IoU 76/100: thresholds 0.50 .. 0.75 pass, 6 of 10.
        pytest.param([box_result(0, 0, 7.6, 10, 0.9)], {"AP": 0.6, "AP50": 1.0, "AP75": 1.0}, id="iou-0.76"),
        # A false positive ranked below the true positive does not change the precision at any recall.
        pytest.param(
            [box_result(0, 0, 10, 10, 0.9), box_result(50, 50, 10, 10, 0.5)],
            {"AP": 1.0, "AP50": 1.0, "AR1": 1.0},
            id="fp-below-tp",
        ),
        # Ranked above it: the only recall level (1.0) is reached at precision 1/2, so every one of the
        # 101 recall thresholds reads precision 0.5; the top-1 detection is the false positive.
        pytest.param(
            [box_result(50, 50, 10, 10, 0.9), box_result(0, 0, 10, 10, 0.5)],
            {"AP": 0.5, "AP50": 0.5, "AR1": 0.0, "AR10": 1.0},
            id="fp-above-tp",
        ),
        # A result of another class is not a detection of this one.
        pytest.param([{**box_result(0, 0, 10, 10, 0.9), "category_id": 7}], {"AP": 0.0}, id="unknown-class"),
    ],
)
def test_bbox_ap(results: list[dict[str, Any]], expected: dict[str, float]) -> None:
    stats = coco_metrics(box_gt(), results, "bbox")
    assert list(stats) == list(metrics.BOX_STAT_NAMES)
    for name, value in expected.items():
        assert stats[name] == pytest.approx(value, abs=1e-9), name
    assert stats["APs"] == pytest.approx(stats["AP"], abs=1e-9)  # the only object is small
    assert stats["APm"] == stats["APl"] == -1.0  # no medium or large ground truth: undefined


def test_bbox_ap_on_a_subset_of_images() -> None:
    gt = box_gt(num_images=2)
    # Image 1: a true positive (score 0.9). Image 2: its object is missed, a false positive (0.8) instead.
    results = [box_result(0, 0, 10, 10, 0.9, image_id=1), box_result(50, 50, 10, 10, 0.8, image_id=2)]
    # Both images: ranked TP, FP over 2 objects -> recall 0.5 at precision 1, never more. The recall
    # thresholds 0.00 .. 0.50 (51 of 101) read precision 1, the others 0.
    assert coco_metrics(gt, results, "bbox")["AP"] == pytest.approx(51 / 101)
    assert coco_metrics(gt, results, "bbox", image_ids=[1])["AP"] == pytest.approx(1.0)
    assert coco_metrics(gt, results, "bbox", image_ids=[2])["AP"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_metrics(gt, results, "bbox", image_ids=[1, 3])


def test_results_on_images_outside_the_ground_truth_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    results = [box_result(0, 0, 10, 10, 0.9), box_result(0, 0, 10, 10, 0.95, image_id=42)]
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        stats = coco_metrics(box_gt(), results, "bbox")
    assert stats["AP"] == pytest.approx(1.0)
    assert "dropped 1 results" in caplog.text


def test_coco_metrics_leaves_its_inputs_alone_and_reads_files(tmp_path: Path) -> None:
    gt = box_gt()
    results = [box_result(0, 0, 10, 10, 0.9)]
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    from_dict = coco_metrics(gt, results, "bbox")
    assert gt == gt_before and results == results_before  # loadRes / COCOeval write into what they get
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert coco_metrics(path, results, "bbox") == from_dict
    assert coco_metrics(str(path), results, "bbox") == from_dict


def test_ground_truth_annotation_id_zero_still_matches() -> None:
    # Raw pycocotools scores this perfect detection 0: it stores match ids and reads 0 as "unmatched".
    gt = box_gt()
    gt["annotations"][0]["id"] = 0
    assert coco_metrics(gt, [box_result(0, 0, 10, 10, 0.9)], "bbox")["AP"] == pytest.approx(1.0)


def test_coco_output_goes_to_the_debug_log(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=metrics.__name__):
        coco_metrics(box_gt(), [box_result(0, 0, 10, 10, 0.9)], "bbox")
    assert capsys.readouterr().out == ""
    assert "Average Precision" in caplog.text


@pytest.mark.parametrize(
    ("gt_change", "results", "iou_type", "message"),
    [
        (lambda gt: gt.pop("annotations"), [], "bbox", "no 'annotations'"),
        (lambda gt: gt["annotations"][0].pop("iscrowd"), [], "bbox", "lacks"),
        (lambda gt: None, [], "segm", "lacks"),  # box ground truth has no segmentation
        (lambda gt: None, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], "bbox", "score"),
        (lambda gt: None, [box_result(0, 0, 1, 1, 0.5) | {"bbox": [0, 0, 1]}], "bbox", "4 numbers"),
        (lambda gt: None, [], "boxes", "iou_type"),
    ],
)
def test_coco_metrics_rejects_malformed_input(
    gt_change: Callable[[dict[str, Any]], object], results: list[dict[str, Any]], iou_type: Any, message: str
) -> None:
    gt = box_gt()
    gt_change(gt)
    with pytest.raises(ValueError, match=message):
        coco_metrics(gt, results, iou_type)


def rle_of(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def square_mask(x0: int, y0: int, x1: int, y1: int, size: int = 100) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def segm_gt(segmentation: Any, area: float) -> dict[str, Any]:
    return {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": CATEGORIES,
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": segmentation, "area": area, "iscrowd": 0}
        ],
    }


def segm_result(segmentation: Any, score: float = 0.9) -> dict[str, Any]:
    return {"image_id": 1, "category_id": 1, "segmentation": segmentation, "score": score}


def first_pixels_of(mask: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` pixels of ``mask`` in row-major order."""
    flat = np.zeros(mask.size, dtype=bool)
    flat[np.flatnonzero(mask)[:count]] = True
    return flat.reshape(mask.shape)


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with a run of zeros."""
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


SQUARE_POLYGON = [[10.0, 10.0, 50.0, 10.0, 50.0, 50.0, 10.0, 50.0]]
GT_MASK = square_mask(10, 10, 20, 20)  # 100 pixels


@pytest.mark.parametrize(
    ("gt", "results", "expected_ap"),
    [
        # Polygons on both sides (the result polygon is rasterised with the image size from the ground truth).
        pytest.param(segm_gt(SQUARE_POLYGON, 1600), [segm_result(SQUARE_POLYGON)], 1.0, id="polygon-perfect"),
        pytest.param(segm_gt(SQUARE_POLYGON, 1600), [], 0.0, id="polygon-no-results"),
        pytest.param(segm_gt(rle_of(GT_MASK), 100), [segm_result(rle_of(GT_MASK))], 1.0, id="rle-perfect"),
        pytest.param(
            segm_gt(rle_of(GT_MASK), 100), [segm_result(uncompressed_rle(GT_MASK))], 1.0, id="uncompressed-rle"
        ),
        # 58 of the 100 ground-truth pixels: IoU 0.58, between the 0.55 and 0.60 thresholds -> 2 of 10.
        pytest.param(
            segm_gt(rle_of(GT_MASK), 100), [segm_result(rle_of(first_pixels_of(GT_MASK, 58)))], 0.2, id="iou-0.58"
        ),
    ],
)
def test_segm_ap(gt: dict[str, Any], results: list[dict[str, Any]], expected_ap: float) -> None:
    stats = coco_metrics(gt, results, "segm")
    assert stats["AP"] == pytest.approx(expected_ap, abs=1e-9)
    assert stats["AP50"] == pytest.approx(1.0 if results else 0.0, abs=1e-9)


def test_segm_area_ranges_use_mask_areas_even_when_results_carry_boxes() -> None:
    # A false positive ranked above the true positive, both 40 x 40 px masks ("medium"). Left in, its
    # 100 x 100 px box would make loadRes take the box area (10000 px, "large"), so APm would ignore
    # the false positive and read 1.0 instead of 0.5.
    false_positive = [[55.0, 55.0, 95.0, 55.0, 95.0, 95.0, 55.0, 95.0]]
    results = [
        segm_result(SQUARE_POLYGON, score=0.5) | {"bbox": [10, 10, 40, 40]},
        segm_result(false_positive, score=0.9) | {"bbox": [0, 0, 100, 100]},
    ]
    stats = coco_metrics(segm_gt(SQUARE_POLYGON, 1600), results, "segm")
    assert stats["AP"] == pytest.approx(0.5)
    assert stats["APm"] == pytest.approx(0.5)


# COCOeval's OKS sigmas of the 17 COCO person keypoints.
COCO_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
)
COCO_SIGMAS = COCO_SIGMAS / 10
KEYPOINT_AREA = 3000.0  # a "medium" object


def keypoints_xyv(num_keypoints: int, dx: float = 0.0) -> list[float]:
    return [v for i in range(num_keypoints) for v in (20.0 + 2 * i + dx, 30.0 + i, 2.0)]


def keypoint_gt(num_keypoints: int = 17) -> dict[str, Any]:
    return {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "hand", "keypoints": [f"k{i}" for i in range(num_keypoints)]}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 50, 60],
                "area": KEYPOINT_AREA,
                "iscrowd": 0,
                "keypoints": keypoints_xyv(num_keypoints),
                "num_keypoints": num_keypoints,
            }
        ],
    }


def keypoint_result(num_keypoints: int = 17, dx: float = 0.0) -> dict[str, Any]:
    return {"image_id": 1, "category_id": 1, "keypoints": keypoints_xyv(num_keypoints, dx), "score": 0.9}


@pytest.mark.parametrize("dx", [0.0, 4.0, 5.0])
def test_keypoint_ap(dx: float) -> None:
    # Every keypoint shifted by dx px: OKS = mean_i exp(-dx^2 / (2 * area * (2 sigma_i)^2)); a single
    # object then passes the thresholds 0.50, 0.55, ... that are <= OKS (dx 4: OKS 0.766; dx 5: 0.684).
    oks = float(np.mean(np.exp(-(dx**2) / (2 * KEYPOINT_AREA * (2 * COCO_SIGMAS) ** 2))))
    thresholds = [0.5 + 0.05 * k for k in range(10)]
    assert min(abs(oks - t) for t in thresholds) > 1e-3  # not on a boundary
    expected_ap = sum(t <= oks for t in thresholds) / 10

    stats = coco_metrics(keypoint_gt(), [keypoint_result(dx=dx)], "keypoints")
    assert list(stats) == list(metrics.KEYPOINT_STAT_NAMES)
    assert stats["AP"] == pytest.approx(expected_ap, abs=1e-9)
    assert stats["APm"] == pytest.approx(expected_ap, abs=1e-9)
    assert stats["APl"] == -1.0
    assert expected_ap == {0.0: 1.0, 4.0: 0.6, 5.0: 0.4}[dx]  # the hand-computed values behind the formula


def test_keypoints_without_results_score_zero() -> None:
    stats = coco_metrics(keypoint_gt(), [], "keypoints")
    assert stats["AP"] == 0.0 and stats["AR"] == 0.0


def test_keypoint_sets_other_than_coco_need_their_sigmas() -> None:
    gt, results = keypoint_gt(5), [keypoint_result(5)]
    with pytest.raises(ValueError, match=r"17 COCO person keypoints.*5 keypoints"):
        coco_metrics(gt, results, "keypoints")
    with pytest.raises(ValueError, match="one sigma per keypoint"):
        coco_metrics(gt, results, "keypoints", keypoint_sigmas=[0.05] * 17)
    assert coco_metrics(gt, results, "keypoints", keypoint_sigmas=[0.05] * 5)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="disagree"):
        coco_metrics(keypoint_gt(17), [keypoint_result(5)], "keypoints")


# --------------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------------

GT_BOX = [0.0, 0.0, 10.0, 10.0]


@pytest.mark.parametrize(
    ("predicted", "hit"),
    [
        ([0.0, 0.0, 10.0, 10.0], True),
        (None, False),  # no box in the answer
        ([0.0, 0.0, 5.0, 10.0], True),  # IoU exactly 0.5 counts (>=)
        ([0.0, 0.0, 5.1, 10.0], True),  # IoU 0.51
        ([0.0, 0.0, 4.9, 10.0], False),  # IoU 0.49
        ([20.0, 20.0, 30.0, 30.0], False),  # disjoint
        ([10.0, 10.0, 0.0, 0.0], False),  # corners swapped: an empty box
    ],
)
def test_grounding_precision_per_sample(predicted: list[float] | None, hit: bool) -> None:
    assert grounding_precision([predicted], [GT_BOX]) == (1.0 if hit else 0.0)


def test_grounding_precision_over_samples() -> None:
    predicted = [[0, 0, 10, 10], None, [0, 0, 4.9, 10], [100, 100, 110, 112]]
    gt = [GT_BOX, GT_BOX, GT_BOX, [100, 100, 110, 110]]  # the last: IoU 100/120 = 0.83
    assert grounding_precision(predicted, gt) == 0.5
    assert grounding_precision(predicted, gt, iou_threshold=0.9) == 0.25


@pytest.mark.parametrize(
    ("predicted", "gt", "message"),
    [
        ([None], [GT_BOX, GT_BOX], "predictions for 2"),
        ([], [], "at least one"),
        ([[0, 0, 1]], [GT_BOX], "4 numbers"),
        ([None], [[0, 0, 1, 1, 1]], "4 numbers"),
    ],
)
def test_grounding_precision_rejects_malformed_input(predicted: list, gt: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        grounding_precision(predicted, gt)


# --------------------------------------------------------------------------------------------------
# Captions (pycocoevalcap's tokenizer starts a JVM per call: few calls here)
# --------------------------------------------------------------------------------------------------

needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="caption metrics need Java for pycocoevalcap's PTB tokenizer"
)

REFERENCES = {
    1: ["a brown dog runs across the grass", "a dog running on a lawn"],
    2: ["two cats sleep on a red sofa", "cats sleeping together on a couch"],
    3: ["a man rides a bicycle down the street", "a person cycling along a road"],
}
CORRECT = {image_id: captions[0] for image_id, captions in REFERENCES.items()}


@needs_java
def test_captions_equal_to_a_reference_score_full_bleu(capfd: pytest.CaptureFixture[str]) -> None:
    # Image 1's caption has a carriage return and a line separator for spaces: the tokenizer would
    # read them as new lines and shift every later caption onto the wrong image.
    predictions = {**CORRECT, 1: "A brown dog\rruns across\u2028the grass."}
    scores = caption_metrics(predictions, REFERENCES)
    assert list(scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"]
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)  # pycocoevalcap adds tiny epsilons
    assert scores["CIDEr"] > 1.0
    captured = capfd.readouterr()
    assert "PTBTokenizer" not in captured.err and captured.out == ""


@needs_java
def test_a_nonsense_caption_scores_lower() -> None:
    correct = caption_metrics(CORRECT, REFERENCES)
    nonsense = caption_metrics({**CORRECT, 2: "purple quantum fork of seven"}, REFERENCES)
    assert nonsense["BLEU-4"] < correct["BLEU-4"]
    assert nonsense["CIDEr"] < correct["CIDEr"]


@needs_java
def test_cider_of_a_single_image_is_zero() -> None:
    # CIDEr-D's idf weight is log(#images / document frequency) = log(1 / 1) = 0 for every n-gram.
    scores = caption_metrics({7: "a dog on the grass"}, {7: ["a dog on the grass"]})
    assert scores["CIDEr"] == 0.0
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        ({1: "a", 2: "b"}, {1: ["a"]}, r"ids in predictions without references: \[2\]"),
        ({1: "a"}, {1: ["a"], 3: ["c"]}, r"ids in references without predictions: \[3\]"),
        ({1: "a"}, {1: "a"}, "non-empty sequence"),  # a bare string is not a list of captions
        ({1: "a"}, {1: []}, "non-empty sequence"),
        ({}, {}, "at least one"),
    ],
)
def test_caption_metrics_rejects_mismatched_ids(predictions: dict, references: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        caption_metrics(predictions, references)


def test_caption_metrics_says_how_to_install_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install default-jre-headless"):
        caption_metrics(CORRECT, REFERENCES)


# --------------------------------------------------------------------------------------------------
# VQA
# --------------------------------------------------------------------------------------------------


def vqa_annotation(
    question_id: int, answers: list[str], answer_type: str = "other", question_type: str = "what is"
) -> dict[str, Any]:
    return {
        "question_id": question_id,
        "question_type": question_type,
        "answer_type": answer_type,
        "answers": [
            {"answer": answer, "answer_confidence": "yes", "answer_id": i + 1} for i, answer in enumerate(answers)
        ],
    }


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # Leave-one-out over the 10 annotators of min(1, matches among the other 9 / 3).
        ("cat", ["cat"] * 4 + ["dog"] * 6, 1.0),  # every subset keeps >= 3 matches
        ("cat", ["cat"] * 3 + ["dog"] * 7, 0.9),  # 7 subsets keep 3 -> 1, 3 keep 2 -> 2/3
        ("cat", ["cat"] * 2 + ["dog"] * 8, 0.6),  # 8 subsets keep 2 -> 2/3, 2 keep 1 -> 1/3
        ("cat", ["cat"] + ["dog"] * 9, 0.3),  # 9 subsets keep 1 -> 1/3, 1 keeps 0
        ("cat", ["dog"] * 10, 0.0),
        # Normalisation, applied to both sides because the human answers differ.
        ("two", ["2"] * 4 + ["3"] * 6, 1.0),  # number words -> digits
        ("2", ["two"] * 4 + ["three"] * 6, 1.0),  # ... in the ground truth too
        ("a circle", ["circle"] * 4 + ["square"] * 6, 1.0),  # articles dropped
        ("Circle", ["the circle"] * 4 + ["square"] * 6, 1.0),
        ("yes.", ["yes"] * 9 + ["no"], 1.0),  # punctuation
        ("dont", ["don't"] * 4 + ["do"] * 6, 1.0),  # contraction "dont" -> "don't"
        ("don't", ["dont"] * 4 + ["do"] * 6, 1.0),
        # All human answers identical: neither side is normalised (the official rule).
        ("yes", ["yes"] * 10, 1.0),
        ("Yes.", ["yes"] * 10, 0.0),
        ("2", ["two"] * 10, 0.0),
        ("yes", ["Yes"] * 10, 0.0),
        (" yes\n", ["yes"] * 10, 1.0),  # whitespace is cleaned before everything
        ("Yes", ["yes", "yes "] * 5, 0.0),  # identical once stripped, so still not normalised
    ],
)
def test_vqa_accuracy_of_one_question(prediction: str, answers: list[str], expected: float) -> None:
    scores = vqa_accuracy({1: prediction}, [vqa_annotation(1, answers)])
    assert scores["accuracy"] == pytest.approx(expected)
    assert scores["accuracy/other"] == pytest.approx(expected)


def test_vqa_leave_one_out_removes_equal_answer_dicts_like_the_official_code() -> None:
    # Without answer_id, the four "cat" dicts are equal, and the official `item != gtAnsDatum` leaves
    # out all four at once: 4 subsets with 0 matches, 6 with 4 -> 0.6 (with answer ids it is 1.0).
    annotation = vqa_annotation(1, ["cat"] * 4 + ["dog"] * 6)
    annotation["answers"] = [{"answer": answer["answer"]} for answer in annotation["answers"]]
    assert vqa_accuracy({1: "cat"}, [annotation])["accuracy"] == pytest.approx(0.6)


def test_vqa_accuracy_per_answer_type() -> None:
    annotations = [
        vqa_annotation(1, ["yes"] * 10, "yes/no", "is there a"),
        vqa_annotation(2, ["2"] * 2 + ["3"] * 8, "number", "how many"),
        vqa_annotation(3, ["red"] * 10, "other", "what color is the"),
        vqa_annotation(4, ["blue"] * 5 + ["navy"] * 5, "other", "what color is the"),
    ]
    predictions = {1: "yes", 2: "two", 3: "green", 4: "Blue"}
    scores = vqa_accuracy(predictions, annotations)
    assert scores == pytest.approx(
        {
            "accuracy": (1.0 + 0.6 + 0.0 + 1.0) / 4,
            "accuracy/yes/no": 1.0,
            "accuracy/number": 0.6,
            "accuracy/other": 0.5,
            "accuracy[is there a]": 1.0,
            "accuracy[how many]": 0.6,
            "accuracy[what color is the]": 0.5,
        }
    )
    del annotations[0]["question_type"]  # optional, as in the official format
    assert "accuracy[is there a]" not in vqa_accuracy(predictions, annotations)


def test_vqa_missing_predictions(caplog: pytest.LogCaptureFixture) -> None:
    annotations = [vqa_annotation(1, ["yes"] * 10), vqa_annotation(2, ["no"] * 10)]
    with pytest.raises(ValueError, match=r"no prediction for 1 of 2 questions, e\.g\. \[2\]"):
        vqa_accuracy({1: "yes"}, annotations)
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        scores = vqa_accuracy({1: "yes", 99: "extra"}, annotations, allow_missing=True)
    assert scores["accuracy"] == pytest.approx(0.5)  # the missing one scores 0, the extra one is ignored
    assert "no prediction for 1 questions" in caplog.text and "ignored 1 predictions" in caplog.text


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Yes.", "yes"),
        ("yes!", "yes"),
        ("yes !", "yes"),
        ("Hello?", "hello"),
        ("two dogs", "2 dogs"),
        ("None", "0"),
        ("The Ten", "10"),
        ("a circle", "circle"),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("don't", "don't"),  # the apostrophe is not punctuation here
        ("3:00", "3:00"),  # nor is the colon
        ("1,000", "1000"),  # a digit-comma-digit group deletes every mark
        ("red,white", "red white"),  # otherwise a mark touching no space becomes a space
        ("red, white", "red white"),  # ... and one touching a space is deleted
        ("t-shirt", "t shirt"),
        ("(left)", "left"),
        ("2.5", "2.5"),  # a period before a digit stays
        ("e.g.", "eg"),
        ("Im", "im"),  # the official table's capitalised keys never match after lower-casing
        ("yes\n", "yes"),
        ("x" + "." * 40, "x" + "." * 8),  # the official call deletes at most 32 periods
    ],
)
def test_normalize_vqa_answer(text: str, normalized: str) -> None:
    assert normalize_vqa_answer(text) == normalized
    assert metrics.normalize_vqa_answer is normalize_vqa_answer


# --------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------


def test_mean_iou_of_two_label_maps() -> None:
    targets = [np.array([[0, 0, 1], [1, 255, 2]]), np.array([[2, 2], [0, 255]])]
    predictions = [np.array([[0, 1, 1], [1, 0, 2]]), np.array([[2, 0], [0, 3]])]
    # Scored (target, prediction) pairs, the 255 pixels left out (with the 3 predicted on one):
    #   image 1: (0,0) (0,1) (1,1) (1,1) (2,2)    image 2: (2,2) (2,0) (0,0)
    # class 0: TP 2, FN 1, FP 1 -> 2/4;  class 1: TP 2, FP 1 -> 2/3;  class 2: TP 2, FN 1 -> 2/3;
    # class 3: no pixel anywhere -> undefined. Pixel accuracy 6/8.
    scores = mean_iou(predictions, targets, num_classes=4)
    per_class = scores["per_class_iou"]
    assert per_class[:3] == pytest.approx([0.5, 2 / 3, 2 / 3])
    assert math.isnan(per_class[3])
    assert scores["mIoU"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(6 / 8)


def test_mean_iou_accumulates_over_images_rather_than_averaging_them() -> None:
    # Image 1 (8 px): class 0 right everywhere. Image 2 (2 px): class 0 predicted as 1 everywhere.
    targets = [np.zeros((2, 4), dtype=int), np.zeros((1, 2), dtype=int)]
    predictions = [np.zeros((2, 4), dtype=int), np.ones((1, 2), dtype=int)]
    scores = mean_iou(predictions, targets, num_classes=2)
    assert scores["per_class_iou"] == pytest.approx([8 / 10, 0.0])  # class 1: union 2 (FP), TP 0
    assert scores["mIoU"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("prediction", "target", "message"),
    [
        (np.zeros((2, 2), dtype=int), np.zeros((2, 3), dtype=int), "must both be"),
        (np.full((2, 2), 5), np.zeros((2, 2), dtype=int), "prediction class ids"),
        (np.zeros((2, 2), dtype=int), np.full((2, 2), 7), "target class ids"),
        (np.zeros((2, 2)), np.zeros((2, 2), dtype=int), "integer"),
    ],
)
def test_mean_iou_rejects_malformed_maps(prediction: np.ndarray, target: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mean_iou([prediction], [target], num_classes=3)


def mask_of(rows: list[str]) -> np.ndarray:
    return np.array([[char == "#" for char in row] for row in rows])


@pytest.mark.parametrize(
    ("pred", "target", "iou"),
    [
        (["##", ".."], ["##", ".."], 1.0),
        (["##", ".."], ["..", "##"], 0.0),
        (["##", "#."], ["#.", "##"], 2 / 4),
        (["..", ".."], ["..", ".."], 1.0),  # both empty: they agree
        (["..", ".."], ["#.", ".."], 0.0),
    ],
)
def test_mask_iou(pred: list[str], target: list[str], iou: float) -> None:
    assert mask_iou(mask_of(pred), mask_of(target)) == pytest.approx(iou)


def test_interactive_iou() -> None:
    preds = [mask_of(["##..", "...."]), mask_of(["#.", ".."])]
    targets = [mask_of(["####", "...."]), mask_of(["#.", ".."])]
    # Sample 1: I 2, U 4 -> 0.5. Sample 2: I 1, U 1 -> 1. cIoU = (2 + 1) / (4 + 1).
    assert interactive_iou(preds, targets) == pytest.approx({"mIoU": 0.75, "cIoU": 0.6})
    with pytest.raises(ValueError, match="bool"):
        interactive_iou([np.zeros((2, 2), dtype=int)], [np.zeros((2, 2), dtype=int)])
