"""ShapesWorld drawings: deterministic, prompts that say what is drawn and where, edits whose targets differ from
their sources at the edited shape alone."""

import numpy as np
import pytest

from visionllm.data.shapes.drawings import load_drawings, make_drawing, write_drawings
from visionllm.data.shapes.scene import ShapesWorldConfig, render_scene


def test_a_drawing_is_a_function_of_seed_split_and_index():
    first, again = make_drawing(0, "val", 3), make_drawing(0, "val", 3)
    assert first == again and np.array_equal(render_scene(first.scene).image, render_scene(again.scene).image)
    assert make_drawing(0, "val", 4).prompt != first.prompt or make_drawing(1, "val", 3).prompt != first.prompt


@pytest.mark.parametrize("index", range(40))
def test_the_prompt_names_what_is_drawn_and_where(index):
    made = make_drawing(0, "train", index)
    scene, prompt, relation, edited, target = made.scene, made.prompt, made.relation, made.edited, made.index
    names = [f"{o.color} {o.category}" for o in scene.objects]
    assert all(name in prompt for name in names)
    if relation is not None:
        (ax, ay), (bx, by) = (o.center_xy for o in scene.objects)
        assert {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]
    masks = render_scene(scene).masks
    assert not (masks[0] & masks[-1]).any() or len(masks) == 1  # the shapes never touch
    changed = (render_scene(scene).image != render_scene(edited).image).any(-1)
    assert changed.any() and not (changed & ~masks[target]).any()  # only the edited shape's pixels change
    assert made.instruction.startswith("remove" if made.kind == "remove" else "make")
    assert names[target] in made.instruction


def test_held_out_pairs_are_never_drawn_in_train_nor_made_by_its_edits():
    config = ShapesWorldConfig(holdout_pairs=(("red", "circle"),))
    for index in range(200):
        made = make_drawing(0, "train", index, config)
        assert all((o.color, o.category) != ("red", "circle") for o in (*made.scene.objects, *made.edited.objects))


def test_written_drawings_read_back(tmp_path):
    assert write_drawings(tmp_path, "val", 5, progress=False) == 5
    drawings = load_drawings(tmp_path, "val")
    assert len(drawings) == 5 and all(d.image_path.is_file() and d.edit.image_path.is_file() for d in drawings)
    first = drawings[0]
    x1, y1, x2, y2 = first.objects[0].box_xyxy_px
    assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
    with pytest.raises(FileNotFoundError, match="visionllm data shapes"):
        load_drawings(tmp_path, "train")
