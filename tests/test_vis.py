import numpy as np
import pytest
from PIL import Image

from visionllm.formats.results import Detections, SegmentationMap, TextAnswer
from visionllm.vis import class_color, contact_sheet, draw_detections, draw_result, draw_text_below


def test_draw_detections_marks_boxes_polygons_keypoints_and_masks():
    image = np.full((32, 32, 3), 128, np.uint8)
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 20:30, 20:30] = True
    det = Detections(
        [[4, 4, 16, 16]],
        [0.9],
        ("red circle",),
        polygons_xy_px=[np.array([[4, 4], [16, 4], [10, 16]])],
        keypoints_xyv_px=np.array([[[8, 8, 2], [12, 12, 2], [0, 0, 0]]]),
        masks=masks,
    )
    out = np.asarray(draw_detections(image, det, skeleton=[(1, 2)], scale=2.0))
    assert out.shape == (64, 64, 3)
    color = np.array(class_color("red circle"))
    assert (np.abs(out[8:34, 8] - color).sum(axis=1) == 0).any()  # the box's left edge
    assert not np.array_equal(out[50, 50], [128, 128, 128])  # the mask overlay
    assert np.array_equal(out[2, 60], [128, 128, 128])  # untouched background


def test_text_band_and_sheet():
    tile = draw_text_below(Image.new("RGB", (40, 40)), ["a caption that is long enough to wrap around"])
    assert tile.height > 40
    sheet = contact_sheet([tile, tile, tile], columns=2)
    assert sheet.width == 2 * (40 + 4) + 4 and sheet.height == 2 * (tile.height + 4) + 4
    with pytest.raises(ValueError, match="at least one tile"):
        contact_sheet([])


def test_colors_are_stable():
    assert class_color("star") == class_color("star")
    assert class_color("circle", ["circle", "star"]) != class_color("star", ["circle", "star"])


def test_draw_result_upscales_small_images_and_draws_either_kind_of_answer():
    image = Image.new("RGB", (64, 32), (40, 40, 40))
    found = Detections(np.array([[8.0, 4.0, 40.0, 28.0]]), np.array([0.9]), ("star",))
    boxes = draw_result(image, found, min_side=256)
    assert boxes.size == (256, 128)
    assert np.asarray(boxes).reshape(-1, 3).max(0).max() > 40  # the box and its label are drawn
    text = draw_result(image, TextAnswer("a grey picture"), min_side=256)
    assert text.width == 256 and text.height > 128  # the answer sits in a band under the picture
    large = Image.new("RGB", (600, 300))
    assert draw_result(large, Detections.empty(), min_side=256).size == (600, 300)  # never shrunk


def test_a_semantic_map_tints_each_class_with_its_colour():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    labels = np.zeros((20, 40), np.int64)
    labels[:, 20:] = 2  # the right half is the second class
    drawn = draw_result(image, SegmentationMap(labels, ("circle", "star")), min_side=80)
    pixels = np.asarray(drawn)
    assert drawn.width == 80 and drawn.height > 40  # upscaled, with the legend under it
    assert (pixels[10, 10] == 0).all()  # background stays
    star = np.asarray(class_color("star", ("circle", "star")))
    assert np.allclose(pixels[10, 70], 0.55 * star, atol=2)
