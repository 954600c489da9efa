"""The server with a v2 model: visual prompts in /v1/predict and in chat's extra body, multi-turn conversations,
routed results as JSON beside the text, and clear refusals of prompts that do not fit."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from visionllm.formats.results import Decoded, Detections, TextAnswer
from visionllm.serve.app import ServerSettings, create_app
from visionllm.serve.images import to_data_url
from visionllm.serve.protocol import result_json

IMAGE = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def calls(micro_v2_model):
    """Every predict call the server makes: its instructions and its keyword arguments."""
    seen = []
    real = micro_v2_model.predict

    def spy(images, instructions, **kwargs):
        seen.append((list(instructions), kwargs))
        return real(images, instructions, **kwargs)

    micro_v2_model.predict = spy
    yield seen
    del micro_v2_model.predict


def image_url():
    from PIL import Image

    return to_data_url(Image.fromarray(IMAGE))


def chat(v2_client, messages, **visionllm):
    body = {"model": "micro-v2", "messages": messages}
    if visionllm:
        body["visionllm"] = visionllm
    return v2_client.post("/v1/chat/completions", json=body)


def user(text, image=True):
    parts = [{"type": "image_url", "image_url": {"url": image_url()}}] if image else []
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def test_the_task_list_offers_v2_tasks_with_their_prompt_tools_and_nothing_unanswered(v2_client):
    tasks = {t["task"]: t for t in v2_client.get("/v1/tasks").json()["data"]}
    assert tasks["interactive_segmentation"]["prompts"] == ["point", "box", "scribble"]
    assert tasks["region_caption"]["prompts"] == ["point", "box", "scribble"]
    assert tasks["semantic_segmentation"]["output"] == "masks" and "prompts" not in tasks["detection"]
    assert tasks["generation"] == {"task": "generation", "fields": ["description"], "output": "image", "image": False}
    assert tasks["editing"]["fields"] == ["edit"] and tasks["editing"]["image"]
    assert "grounded_caption" not in tasks  # no model answers it yet


def test_a_point_prompt_segments_through_predict_and_is_drawn(v2_client, calls):
    body = {"image": image_url(), "task": "interactive_segmentation", "min_score": 0.0, "render": True}
    body["regions"] = [{"kind": "point", "data": [20, 12]}]
    answer = v2_client.post("/v1/predict", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["output"] == "detections" and len(result["detections"]) == 1
    assert result["detections"][0]["mask_rle"]["size"] == [40, 56]
    assert result["visualization"].startswith("data:image/png;base64,")
    instructions, kwargs = calls[-1]
    assert "<region>" in instructions[0].text
    [[prompt]] = kwargs["regions"]
    assert prompt.kind == "point" and list(prompt.data) == [20, 12]


def test_semantic_segmentation_answers_masks(v2_client):
    body = {"image": image_url(), "task": "semantic_segmentation", "classes": ["circle", "person"]}
    result = v2_client.post("/v1/predict", json=body).json()
    assert result["output"] == "masks" and result["class_names"] == ["circle", "person"]
    assert set(result["masks_rle"]) == {"circle", "person"}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"task": "interactive_segmentation"}, "regions", "needs a visual prompt"),
        ({"task": "caption", "regions": [{"kind": "point", "data": [3, 3]}]}, "regions", "takes no visual prompts"),
        (
            {"task": "interactive_segmentation", "regions": [{"kind": "point", "data": [500, 500]}]},
            "regions[0]",
            "outside",
        ),
        ({"task": "interactive_segmentation", "regions": [{"kind": "box", "data": [1, 2]}]}, "regions[0]", "box"),
        ({"task": "interactive_segmentation", "regions": [{"kind": "mask", "data": [1, 2]}]}, "regions[0]", "PNG"),
        ({"instruction": "What is region1 <region>?"}, "instruction", "1 <region> placeholders but 0 regions"),
    ],
)
def test_prompts_that_do_not_fit_are_refused_with_what_is_wrong(v2_client, body, param, words):
    answer = v2_client.post("/v1/predict", json={"image": image_url(), **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert words in error["message"] and error["param"] == param


def test_a_mask_prompt_comes_as_a_png_data_url(v2_client, calls):
    from PIL import Image

    mask = np.zeros(IMAGE.shape[:2], np.uint8)
    mask[10:20, 5:15] = 255
    body = {"image": image_url(), "task": "region_caption"}
    body["regions"] = [{"kind": "mask", "data": to_data_url(Image.fromarray(mask))}]
    answer = v2_client.post("/v1/predict", json=body)
    assert answer.status_code == 200, answer.text
    [[prompt]] = calls[-1][1]["regions"]
    assert prompt.kind == "mask" and prompt.data.sum() == 100


def test_chat_reads_the_earlier_turns_and_the_regions_of_the_extra_body(v2_client, calls):
    messages = [
        user("What is in the image?"),
        {"role": "assistant", "content": "a red circle"},
        {"role": "user", "content": "What color is it?"},
    ]
    answer = chat(v2_client, messages, regions=[{"kind": "box", "data": [5, 5, 30, 30]}])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["message"]["content"] == body["visionllm"]["text"]
    assert body["visionllm"]["output"] == "text"
    instructions, kwargs = calls[-1]
    assert instructions == ["region1 <region> What color is it?"]
    assert list(kwargs["history"][0]) == [
        {"role": "user", "content": "What is in the image?"},
        {"role": "assistant", "content": "a red circle"},
    ]
    [[prompt]] = kwargs["regions"]
    assert prompt.kind == "box"


def test_a_conversation_that_shows_the_image_twice_is_refused(v2_client):
    messages = [user("<image> What is this?"), {"role": "assistant", "content": "a star"}, user("<image> And this?")]
    answer = chat(v2_client, messages)
    assert answer.status_code == 400 and "once" in answer.json()["error"]["message"]


def test_a_v1_model_refuses_visual_prompts(micro_model):
    with TestClient(create_app(micro_model, ServerSettings(model_id="micro", samples=1))) as v1:
        body = {"image": image_url(), "task": "caption", "regions": [{"kind": "point", "data": [3, 3]}]}
        answer = v1.post("/v1/predict", json=body)
    assert answer.status_code == 400 and "v2 model" in answer.json()["error"]["message"]


def test_routed_results_are_json_beside_the_reply_text():
    found = Detections(np.array([[1.0, 2.0, 10.0, 12.0]]), np.array([0.9]), ("red circle",))
    body = result_json(Decoded(TextAnswer("red circle [DET]", {"[DET]": found})))
    assert body["output"] == "text" and body["text"] == "red circle [DET]"
    assert body["routed"]["[DET]"][0]["class_name"] == "red circle"
    assert "routed" not in result_json(Decoded(TextAnswer("a circle")))


def test_the_image_may_come_in_the_last_turn_of_a_conversation(v2_client, calls):
    messages = [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi."},
        user("<image> And this?"),
    ]
    assert chat(v2_client, messages).status_code == 200
    instructions, kwargs = calls[-1]
    assert instructions == ["<image> And this?"] and "<image>" not in kwargs["history"][0][0]["content"]
