import numpy as np
import pytest

from visionllm.eval.metrics import coco_metrics
from visionllm.formats.results import Detections, TextAnswer
from visionllm.ops.polygons import rle_to_mask


def boxes_and_names():
    return np.array([[0, 0, 10, 10], [5, 5, 20, 25]], dtype=float), ("a", "b")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"boxes_xyxy_px": [[0, 0, 1, 1]], "scores": [0.5, 0.2], "class_names": ("a",)}, "1 boxes but 2 scores"),
        ({"boxes_xyxy_px": [[5, 0, 1, 1]], "scores": [0.5], "class_names": ("a",)}, "x1 <= x2"),
        ({"boxes_xyxy_px": [[0, 0, np.nan, 1]], "scores": [0.5], "class_names": ("a",)}, "finite"),
        ({"boxes_xyxy_px": [[0, 0, 1, 1]], "scores": [1.5], "class_names": ("a",)}, r"\[0, 1\]"),
        (
            {
                "boxes_xyxy_px": [[0, 0, 1, 1]],
                "scores": [1],
                "class_names": ("a",),
                "polygons_xy_px": [[[0, 0], [1, 1]]],
            },
            "at least 3",
        ),
        (
            {
                "boxes_xyxy_px": [[0, 0, 1, 1]],
                "scores": [1],
                "class_names": ("a",),
                "keypoints_xyv_px": np.zeros((2, 17, 3)),
            },
            "shape",
        ),
    ],
)
def test_detections_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Detections(**kwargs)


def test_select_sort_and_empty():
    boxes, names = boxes_and_names()
    det = Detections(boxes, [0.2, 0.9], names, keypoints_xyv_px=np.ones((2, 3, 3)))
    ranked = det.sorted_by_score()
    assert ranked.class_names == ("b", "a")
    np.testing.assert_array_equal(ranked.boxes_xyxy_px[0], boxes[1])
    assert ranked.keypoints_xyv_px.shape == (2, 3, 3)
    assert len(det.select(np.array([False, True]))) == 1
    assert len(Detections.empty()) == 0 and len(Detections.empty().sorted_by_score()) == 0


def test_to_coco_converts_boxes_polygons_keypoints_and_masks():
    boxes, names = boxes_and_names()
    polygons = [np.array([[0, 0], [10, 0], [10, 10], [0, 10]]), np.array([[5, 5], [20, 5], [20, 25]])]
    det = Detections(boxes, [0.9, 0.8], names, polygons_xy_px=polygons)
    entries = det.to_coco(7, {"a": 1, "b": 2})
    assert entries[1]["bbox"] == [5, 5, 15, 20] and entries[1]["category_id"] == 2 and entries[1]["image_id"] == 7
    assert entries[0]["segmentation"] == [[0, 0, 10, 0, 10, 10, 0, 10]]
    masks = np.zeros((2, 30, 30), bool)
    masks[0, :10, :10] = True
    with_masks = Detections(boxes, [0.9, 0.8], names, masks=masks).to_coco(7, {"a": 1, "b": 2})
    np.testing.assert_array_equal(rle_to_mask(with_masks[0]["segmentation"]), masks[0])
    kp = np.zeros((2, 2, 3))
    kp[0] = [[1, 2, 2], [3, 4, 0]]
    with_kp = Detections(boxes, [0.9, 0.8], names, keypoints_xyv_px=kp).to_coco(1, {"a": 1, "b": 2})
    assert with_kp[0]["keypoints"] == [1, 2, 2, 0, 0, 0]
    with pytest.raises(KeyError, match="no COCO category id"):
        det.to_coco(7, {"a": 1})


def test_perfect_detections_score_ap_one_through_coco():
    boxes, names = boxes_and_names()
    gt = {
        "images": [{"id": 1, "width": 40, "height": 40}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": i + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": 1.0,
                "iscrowd": 0,
            }
            for i, (x1, y1, x2, y2) in enumerate(boxes.tolist())
        ],
    }
    results = Detections(boxes, [0.9, 0.8], names).to_coco(1, {"a": 1, "b": 2})
    assert coco_metrics(gt, results, "bbox")["AP"] == pytest.approx(1.0)


def test_json_views():
    boxes, names = boxes_and_names()
    item = Detections(boxes, [0.91234, 0.8], names).to_json()[0]
    assert item == {"class_name": "a", "score": 0.9123, "box_xyxy_px": [0.0, 0.0, 10.0, 10.0]}
    assert TextAnswer("hi").to_json() == {"text": "hi"}
