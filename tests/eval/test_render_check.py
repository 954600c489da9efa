"""The render-check's scoring: presence, layout, edit accuracy and preservation, on judged shapes made by hand."""

from pathlib import Path

import numpy as np
import pytest

from visionllm.data.shapes.drawings import Drawing, DrawingEdit, DrawnObject
from visionllm.data.shapes.scene import COLORS
from visionllm.eval.render_check import Seen, palette_color, score_edits, score_generation

RED_LEFT = (10.0, 40.0, 50.0, 80.0)
BLUE_RIGHT = (80.0, 40.0, 120.0, 80.0)


def drawing(relation="left of", kind="recolor", color="green", index=0) -> Drawing:
    objects = (DrawnObject("circle", "red", RED_LEFT), DrawnObject("square", "blue", BLUE_RIGHT))
    edit = DrawingEdit("make the red circle green", kind, index, color, Path("edited.png"))
    return Drawing(1, Path("x.png"), "a red circle left of a blue square", objects, relation, edit)


def seen(category, color, box, score=0.9) -> Seen:
    return Seen(category, color, np.asarray(box), score)


@pytest.mark.parametrize("color", list(COLORS))
def test_the_palette_colour_of_a_shapes_pixels(color):
    pixels = np.full((8, 8, 3), 128, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    pixels[mask] = np.clip(np.asarray(COLORS[color]) + 15, 0, 255)  # a jittered shade
    pixels[2, 2] = (0, 0, 0)  # a stray pixel does not move the median
    assert palette_color(pixels, mask) == color


@pytest.mark.parametrize(
    ("judged", "presence", "layout"),
    [
        ([seen("circle", "red", RED_LEFT), seen("square", "blue", BLUE_RIGHT)], 1.0, 1.0),
        ([seen("circle", "red", BLUE_RIGHT), seen("square", "blue", RED_LEFT)], 1.0, 0.0),  # the wrong way round
        ([seen("circle", "green", RED_LEFT), seen("square", "blue", BLUE_RIGHT)], 0.5, 0.0),  # wrong colour
        ([seen("star", "red", RED_LEFT)], 0.0, 0.0),  # wrong shape
        ([], 0.0, 0.0),
    ],
)
def test_presence_and_layout(judged, presence, layout):
    scores = score_generation([drawing()], [judged])
    assert scores["presence"] == presence and scores["layout"] == layout
    assert scores["all_present"] == float(presence == 1.0)


def test_relations_read_the_centres_along_their_axis():
    above = [seen("circle", "red", (40, 0, 60, 20)), seen("square", "blue", (40, 90, 60, 110))]
    assert score_generation([drawing("above")], [above])["layout"] == 1.0
    assert score_generation([drawing("below")], [above])["layout"] == 0.0
    assert score_generation([drawing("right of")], [above])["layout"] == 0.0  # same x: not right of


def test_edit_accuracy_and_preservation():
    kept = seen("square", "blue", BLUE_RIGHT)
    recoloured = [seen("circle", "green", RED_LEFT), kept]
    assert score_edits([drawing()], [recoloured]) == {"accuracy": 1.0, "preservation": 1.0}
    unchanged = [seen("circle", "red", RED_LEFT), kept]
    assert score_edits([drawing()], [unchanged])["accuracy"] == 0.0  # the copy control: nothing changed
    both = [seen("circle", "red", RED_LEFT), seen("circle", "green", RED_LEFT), kept]
    assert score_edits([drawing()], [both])["accuracy"] == 0.0  # the old colour must be gone
    elsewhere = [seen("circle", "green", BLUE_RIGHT), kept]
    assert score_edits([drawing()], [elsewhere])["accuracy"] == 0.0  # recoloured in place, not moved
    removed = [kept]
    assert score_edits([drawing(kind="remove", color=None)], [removed])["accuracy"] == 1.0
    lost = [seen("circle", "green", RED_LEFT)]
    assert score_edits([drawing()], [lost])["preservation"] == 0.0  # the other object vanished
    shifted = [seen("circle", "green", RED_LEFT), seen("square", "blue", (90.0, 40.0, 130.0, 80.0))]
    assert score_edits([drawing()], [shifted])["preservation"] == pytest.approx(30 * 40 / (50 * 40))
