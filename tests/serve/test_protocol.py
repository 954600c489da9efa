import pytest

from visionllm.formats.task_table import Instruction, tasks_of_version
from visionllm.formats.tasks import Task
from visionllm.formats.tokens import CodecConfig
from visionllm.serve.errors import RequestError
from visionllm.serve.protocol import (
    ChatRequest,
    TaskParams,
    build_request_instruction,
    params_from_chat,
)

CODEC = CodecConfig(coord_range=32, max_points=20, max_classes=4)
TASKS = tasks_of_version(1)
IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def chat(text=None, *, extra=None, messages=None):
    content = [IMAGE_PART] + ([{"type": "text", "text": text}] if text is not None else [])
    body = {"model": "m", "messages": messages or [{"role": "user", "content": content}]}
    if extra is not None:
        body["visionllm"] = extra
    return ChatRequest.model_validate(body)


def test_v1_serves_exactly_its_six_tasks():
    assert [t.value for t in TASKS] == [
        "detection",
        "instance_segmentation",
        "grounding",
        "keypoints",
        "caption",
        "vqa",
    ]


@pytest.mark.parametrize(
    ("text", "task", "fields"),
    [
        ("detect: red circle, square", "detection", {"classes": ["red circle", "square"]}),
        ("Detect circles and stars.", "detection", {"classes": ["circles", "stars"]}),
        ("segment square", "instance_segmentation", {"classes": ["square"]}),
        ("ground: the leftmost circle.", "grounding", {"expression": "the leftmost circle"}),
        ("keypoints", "keypoints", {}),
        ("Caption", "caption", {}),
        ("describe the image", "caption", {}),
        ("", "caption", {}),
        ("How many stars are there?", "vqa", {"question": "How many stars are there?"}),
        ("detective stories?", "vqa", {"question": "detective stories?"}),
    ],
)
def test_chat_text_becomes_a_task(text, task, fields):
    image, params = params_from_chat(chat(text))
    assert image == IMAGE_PART["image_url"]["url"]
    assert params.task == task
    for name, value in fields.items():
        assert getattr(params, name) == value
    instruction = build_request_instruction(params, CODEC, TASKS)
    assert isinstance(instruction, Instruction) and instruction.task is Task(task)


def test_explicit_task_fields_win_and_fill_from_the_text():
    _, params = params_from_chat(chat("the big red one", extra={"task": "grounding"}))
    assert params.task == "grounding" and params.expression == "the big red one"
    _, params = params_from_chat(chat("what colour?", extra={"task": "vqa"}))
    assert params.question == "what colour?"
    _, params = params_from_chat(chat("detect: circle", extra={"min_score": 0.7}))
    assert params.task == "detection" and params.min_score == 0.7


def test_raw_instruction_passes_through_and_gains_an_image_marker():
    _, params = params_from_chat(chat("The image is <image>. Please generate a caption for the image: "))
    assert build_request_instruction(params, CODEC, TASKS).startswith("The image is <image>.")
    text = build_request_instruction(TaskParams(instruction="Describe it."), CODEC, TASKS)
    assert text == "Describe it. The image is <image>."


def test_the_last_image_and_the_last_user_text_are_used():
    first = {"type": "image_url", "image_url": "data:image/png;base64,FIRST"}
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [first, {"type": "text", "text": "caption"}]},
        {"role": "assistant", "content": "A red circle."},
        {"role": "user", "content": "How many circles?"},
    ]
    image, params = params_from_chat(chat(messages=messages))
    assert image == "data:image/png;base64,FIRST"
    assert params.task == "vqa" and params.question == "How many circles?"


@pytest.mark.parametrize(
    ("params", "words"),
    [
        (TaskParams(task="chat"), "does not answer the task 'chat'"),
        (TaskParams(task="dance"), "does not answer"),
        (TaskParams(task="detection"), "needs classes"),
        (TaskParams(task="detection", classes=["a", "b", "c", "d", "e"]), "class"),
        (TaskParams(task="vqa"), "needs a question"),
        (TaskParams(task="grounding"), "needs an expression"),
        (TaskParams(task="instance_segmentation", classes=["a"], points=40), "points"),
        (TaskParams(), "give a task"),
        (TaskParams(instruction="  "), "empty"),
        (TaskParams(instruction="<image> and <image>"), "2 <image>"),
    ],
)
def test_bad_task_requests_say_what_is_wrong(params, words):
    with pytest.raises(RequestError) as caught:
        build_request_instruction(params, CODEC, TASKS)
    assert caught.value.status == 400
    assert words in caught.value.message


def test_chat_without_an_image_or_user_message_is_refused():
    with pytest.raises(RequestError, match="add a content part"):
        params_from_chat(chat(messages=[{"role": "user", "content": "hello"}]))
    with pytest.raises(RequestError, match="no user message"):
        params_from_chat(chat(messages=[{"role": "system", "content": "hi"}]))
