import pytest
import torch

from visionllm.ops.tensor_boxes import fast_nms_keep

# Two boxes overlapping with IoU 0.81, one far away.
BOXES = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [20.0, 20.0, 30.0, 30.0]]])


@pytest.mark.parametrize(
    ("scores", "threshold", "kept"),
    [
        ([[0.9], [0.8], [0.7]], 0.5, [[True], [False], [True]]),  # the weaker of an overlapping pair goes
        ([[0.8], [0.9], [0.7]], 0.5, [[False], [True], [True]]),
        ([[0.9], [0.8], [0.7]], 0.9, [[True], [True], [True]]),  # not above the threshold
        ([[0.9], [0.9], [0.1]], 0.5, [[True], [False], [True]]),  # a tie: the lower index wins
        ([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]], 0.5, [[True, False], [False, True], [True, True]]),  # per class
    ],
)
def test_fast_nms_keep_is_class_wise(scores, threshold, kept):
    keep = fast_nms_keep(BOXES, torch.tensor([scores]), threshold)
    assert keep.tolist() == [kept]


def test_fast_nms_keep_treats_images_apart():
    boxes = torch.cat([BOXES, BOXES[:, [2, 1, 0]]])
    scores = torch.tensor([[[0.9], [0.8], [0.7]], [[0.7], [0.8], [0.9]]])
    assert fast_nms_keep(boxes, scores, 0.5)[:, :, 0].tolist() == [[True, False, True], [True, False, True]]
