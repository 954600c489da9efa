"""The shipped tiny v2 model: it loads from its folder alone, answers through `visionllm chat`, and reads the image
(colours of single objects, named right far more often than the question alone allows)."""

from pathlib import Path

import pytest

from visionllm.cli import main
from visionllm.data.shapes.dataset import make_image
from visionllm.data.shapes.scene import ShapesWorldConfig
from visionllm.formats.results import Detections
from visionllm.models.loading import load_pretrained
from visionllm.ops.boxes import box_iou

SHIPPED_V2 = Path(__file__).resolve().parents[2] / "checkpoints" / "visionllm-v2-tiny"


@pytest.fixture(scope="module")
def model():
    assert (SHIPPED_V2 / "config.json").exists(), f"the shipped v2 model is missing at {SHIPPED_V2}"
    return load_pretrained(SHIPPED_V2)


def scenes(size, count=24):
    """Generated scenes of a seed no split uses, without people."""
    for index in range(count):
        yield make_image(97, "val", index, ShapesWorldConfig(image_size=size, person_probability=0.0))


def test_it_is_a_small_fp16_v2_checkpoint(model):
    from safetensors import safe_open

    assert model.version == 2 and model.config.patch_labels is not None
    assert (SHIPPED_V2 / "model.safetensors").stat().st_size < 60 * 2**20
    with safe_open(str(SHIPPED_V2 / "model.safetensors"), "pt") as weights:
        floats = {weights.get_slice(name).get_dtype() for name in weights.keys()} - {"I64", "BOOL"}  # noqa: SIM118
    assert floats == {"F16"}


def test_chat_prints_the_reply(tmp_path, capsys):
    from PIL import Image

    record = next(scenes(128))
    image = tmp_path / "scene.png"
    Image.fromarray(record.rendered.image).save(image)
    assert main(["chat", "--model", str(SHIPPED_V2), "--image", str(image), "--message", "Describe the image."]) == 0
    assert len(capsys.readouterr().out.split()) >= 2


def test_it_names_the_colour_of_an_object_it_is_asked_about(model):
    right = asked = 0
    for record in scenes(model.config.image_size):
        shapes = [f for f in record.facts if sum(g.category == f.category for g in record.facts) == 1]
        if not shapes:
            continue
        fact = shapes[0]
        answer = model.ask(record.rendered.image, f"What color is the {fact.category}?").lower()
        right += fact.color in answer
        asked += 1
    assert asked >= 10 and right / asked >= 0.6  # six colours: a blind guess is right about 1 in 6


def test_it_finds_the_objects_of_a_scene(model):
    found = hits = 0
    for record in scenes(model.config.image_size, 8):
        detections = model.detect(record.rendered.image, ["circle", "square", "triangle", "star", "hexagon"], 0.3)
        assert isinstance(detections, Detections)
        boxes = [f.box_xyxy_px for f in record.facts]
        if len(detections):
            found += len(detections)
            hits += int((box_iou(detections.boxes_xyxy_px, boxes).max(1) >= 0.5).sum())
    assert found and hits / found >= 0.6
