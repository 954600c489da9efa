import random
import re

import pytest

from visionllm.formats.codec import CodecError, OutputKind, parse_class_binding
from visionllm.formats.task_table import TASK_TABLE, build_instruction, build_request, template_fields
from visionllm.formats.tasks import Task
from visionllm.formats.tokens import IMAGE, CodecConfig

FIELDS = {
    "classes": ["red circle", "star"],
    "expression": "the leftmost blue square",
    "question": "How many stars are there?",
    "regions": "region1 <region>",
    "description": "two red circles on a gradient background",
    "edit": "make the circle green",
}


def test_every_task_has_a_row_with_at_least_ten_distinct_templates():
    assert set(TASK_TABLE) == set(Task)
    for task, spec in TASK_TABLE.items():
        assert spec.task is task
        assert len(set(spec.templates)) >= 10, task
        for template in spec.templates:
            assert template.count(IMAGE) == int(spec.reads_image), (task, template)


@pytest.mark.parametrize("task", list(Task))
def test_every_template_renders(task):
    spec = TASK_TABLE[task]
    for index in range(len(spec.templates)):
        kwargs = {k: v for k, v in FIELDS.items() if k in template_fields(spec.templates[index]) or k == "expression"}
        if task is not Task.GROUNDING:
            kwargs.pop("expression", None)
        if task in (Task.DETECTION, Task.INSTANCE_SEGMENTATION, Task.SEMANTIC_SEGMENTATION):
            kwargs["classes"] = FIELDS["classes"]
        instruction = build_instruction(task, template=index, **kwargs)
        assert instruction.text.count(IMAGE) == int(spec.reads_image)
        assert not re.search(r"\{[a-z_]+\}", instruction.text), instruction.text
        if spec.output in (OutputKind.BOXES, OutputKind.POLYGONS, OutputKind.KEYPOINTS):
            assert parse_class_binding(instruction.text) == instruction.class_names
            assert "512" in instruction.text


def test_structured_instructions_state_their_format():
    seg = build_instruction(Task.INSTANCE_SEGMENTATION, classes=["star"], num_points=24, template=3)
    assert seg.output_format.num_points == 24
    assert "x24, y24" in seg.text or "24" in seg.text
    grounding = build_instruction(Task.GROUNDING, expression="the red circle")
    assert grounding.class_names == ("the red circle",)
    assert grounding.output_format.kind is OutputKind.BOXES
    keypoints = build_instruction(Task.KEYPOINTS)
    assert keypoints.class_names == ("person",)
    assert keypoints.output_format.num_points == 17
    caption = build_instruction(Task.CAPTION)
    assert caption.class_names == () and caption.output_format.kind is OutputKind.TEXT


def test_range_follows_the_config():
    text = build_instruction(Task.DETECTION, classes=["a"], config=CodecConfig(coord_range=128)).text
    assert "128" in text and "512" not in text


def test_random_templates_are_deterministic_by_seed():
    a = [build_instruction(Task.CAPTION, template=random.Random(3)).text for _ in range(3)]
    b = [build_instruction(Task.CAPTION, template=random.Random(3)).text for _ in range(3)]
    assert a == b
    texts = {build_instruction(Task.VQA, question="Why?", template=random.Random(s)).text for s in range(50)}
    assert len(texts) >= 8


@pytest.mark.parametrize(
    ("task", "kwargs", "message"),
    [
        (Task.GROUNDING, {}, "needs an expression"),
        (Task.VQA, {}, "needs question"),
        (Task.DETECTION, {}, "needs classes"),
        (Task.DETECTION, {"classes": [f"c{i}" for i in range(600)]}, "at most 512"),
        (Task.INSTANCE_SEGMENTATION, {"classes": ["a"], "num_points": 100}, "at most 64 points"),
        (Task.INSTANCE_SEGMENTATION, {"classes": ["a"], "num_points": 2}, "at least 3"),
        (Task.VQA, {"question": "what is <image>?"}, "must not contain <image>"),
        (Task.CAPTION, {"template": 99}, "templates 0.."),
    ],
)
def test_bad_requests_raise_clear_errors(task, kwargs, message):
    with pytest.raises(CodecError, match=message):
        build_instruction(task, **kwargs)


FIELD_VALUES = {
    "classes": ["red circle"],
    "points": 8,
    "expression": "the red circle",
    "question": "what colour is it?",
    "regions": "region1 <region>",
    "description": "a red circle on grey",
    "edit": "make the circle blue",
}


@pytest.mark.parametrize("task", list(Task))
def test_the_fields_of_each_task_are_what_its_instruction_needs(task):
    spec = TASK_TABLE[task]
    given = {"num_points" if f == "points" else f: FIELD_VALUES[f] for f in spec.fields}
    instruction = build_instruction(task, **given)
    assert instruction.task is task
    for field in set(spec.fields) - {"points"}:  # points has a default
        with pytest.raises(CodecError):
            build_instruction(task, **{k: v for k, v in given.items() if k != field})


@pytest.mark.parametrize("task", list(TASK_TABLE), ids=lambda t: t.value)
def test_every_request_a_routing_model_reads_is_plain_words(task):
    fields = {"classes": ["red circle", "star"], "expression": "the big star", "question": "what is left?",
              "regions": "region1 <region>", "description": "a red circle", "edit": "make it blue"}  # fmt: skip
    for index in range(len(TASK_TABLE[task].requests)):
        text = build_request(task, template=index, **fields)
        assert text.count("<image>") == int(TASK_TABLE[task].reads_image)
        assert "<c0>" not in text and "range" not in text.lower()
        assert "{" not in text


def test_a_request_names_the_field_it_misses():
    assert "left eye, right eye" in build_request(Task.KEYPOINTS, keypoint_names=["left_eye", "right_eye"])
    with pytest.raises(CodecError, match="a grounding request needs expression"):
        build_request(Task.GROUNDING)
    with pytest.raises(CodecError, match=r"request templates 0\.\.5"):
        build_request(Task.DETECTION, classes=["star"], template=6)
