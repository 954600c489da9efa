"""The server with a v2 model that makes images: generation and editing through /v1/predict, chat replies whose
images come back as OpenAI `image_url` content parts, the sampling options, and clear refusals."""

import base64
import copy
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from visionllm.formats.results import Decoded, GeneratedImage, TextAnswer
from visionllm.formats.task_table import Instruction, build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.model import VisionLLMv2
from visionllm.serve.app import ServerSettings, create_app
from visionllm.serve.images import to_data_url
from visionllm.serve.protocol import message_content, result_json

from ..conftest import MICRO_V2

PHOTO = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
"""An input image of 56 x 40 pixels (width x height): not the decoders' square side."""
DRAW = "Draw a red circle left of a blue square."
"""The chat turn whose reply is scripted to have made an image (see `calls`)."""


@pytest.fixture(scope="module")
def calls(micro_v2_model):
    """Every predict call the server makes (images, instructions, keyword arguments).

    The toy model's random LLM never writes [GEN], so its reply to `DRAW` is scripted: "[GEN]" with the image its
    generation decoder makes of the turn, as a trained model's reply would carry it. Everything else is the model's.
    """
    seen = []
    real = micro_v2_model.predict

    def spy(images, instructions, **kwargs):
        seen.append((list(images), list(instructions), kwargs))
        found = real(images, instructions, **kwargs)
        for k, instruction in enumerate(instructions):
            if instruction == DRAW:
                sampling = {name: kwargs[name] for name in ("seed", "steps", "guidance")}
                request = build_instruction(Task.GENERATION, description="a red circle left of a blue square")
                [made] = real([None], [request], **sampling)
                found[k] = Decoded(TextAnswer("[GEN]", images=(made.prediction,)))
        return found

    micro_v2_model.predict = spy
    yield seen
    del micro_v2_model.predict


def decoded_png(url: str) -> Image.Image:
    """The image of a PNG data URL (it must be one)."""
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))
    assert image.format == "PNG"
    return image.convert("RGB")


def generate(v2_client, **fields):
    return v2_client.post("/v1/predict", json={"task": "generation", "description": "a red circle", **fields})


def test_generation_needs_no_image_and_answers_a_png_of_the_decoders_size(v2_client, micro_v2_model, calls):
    answer = generate(v2_client, seed=5, steps=2, guidance=3.0)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["output"] == "image" and body["task"] == "generation" and body["image_size"] is None
    side = micro_v2_model.config.generation.image_size
    assert decoded_png(body["image"]).size == (side, side) and (body["width"], body["height"]) == (side, side)
    assert body["seed"] == 5 and "red circle" in body["prompt"] and "visualization" not in body
    images, [instruction], kwargs = calls[-1]
    assert images == [None] and isinstance(instruction, Instruction) and instruction.task is Task.GENERATION
    assert (kwargs["seed"], kwargs["steps"], kwargs["guidance"], kwargs["image_guidance"]) == (5, 2, 3.0, None)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_another_image(v2_client):
    first, again, other = (generate(v2_client, seed=seed).json()["image"] for seed in (7, 7, 8))
    assert first == again
    assert not np.array_equal(np.asarray(decoded_png(first)), np.asarray(decoded_png(other)))


def test_an_edit_keeps_the_input_images_size(v2_client, calls):
    body = {"task": "editing", "edit": "make the red circle green", "image": to_data_url(Image.fromarray(PHOTO))}
    answer = v2_client.post("/v1/predict", json={**body, "image_guidance": 1.2, "render": True})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["output"] == "image" and result["image_size"] == [56, 40]
    assert decoded_png(result["image"]).size == (56, 40) and (result["width"], result["height"]) == (56, 40)
    images, [instruction], kwargs = calls[-1]
    assert images[0].size == (56, 40) and instruction.task is Task.EDITING and kwargs["image_guidance"] == 1.2


def test_an_edit_of_a_generated_image_chains(v2_client):
    made = generate(v2_client).json()
    edited = v2_client.post("/v1/predict", json={"task": "editing", "edit": "make it green", "image": made["image"]})
    assert edited.status_code == 200, edited.text
    assert decoded_png(edited.json()["image"]).size == (made["width"], made["height"])


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"task": "generation", "description": "a star", "steps": 0}, "steps", "greater than or equal to 1"),
        ({"task": "generation", "description": "a star", "steps": 201}, "steps", "less than or equal to 200"),
        ({"task": "generation", "description": "a star", "steps": 2.5}, "steps", "integer"),
        ({"task": "generation", "description": "a star", "guidance": "x"}, "guidance", "valid number"),
        ({"task": "generation", "description": "a star", "guidance": -1}, "guidance", "greater than or equal to 0"),
        ({"task": "editing", "edit": "x", "image_guidance": 51}, "image_guidance", "less than or equal to 50"),
        ({"task": "generation", "description": "a star", "seed": -1}, "seed", "greater than or equal to 0"),
        ({"task": "generation", "description": "a star", "seed": "3"}, "seed", "valid integer"),
        ({"task": "generation"}, "description", "generation needs a description"),
        ({"task": "generation", "description": " . "}, "description", "generation needs a description"),
        ({"task": "editing", "image": "PHOTO"}, "edit", "editing needs an edit"),
        ({"task": "editing", "edit": "make it green"}, "image", "editing reads an image"),
        ({"task": "caption"}, "image", "caption reads an image"),
        ({"instruction": DRAW}, "image", "reads an image"),
        ({"task": "generation", "description": "a star", "image": "PHOTO"}, "image", "leave out `image`"),
    ],
)
def test_bad_image_requests_are_refused_with_what_is_wrong(v2_client, body, param, words):
    if body.get("image") == "PHOTO":
        body = {**body, "image": to_data_url(Image.fromarray(PHOTO))}
    answer = v2_client.post("/v1/predict", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert words in error["message"] and error["param"] == param


def chat(v2_client, messages, model="micro-v2", **visionllm):
    body = {"model": model, "messages": messages}
    if visionllm:
        body["visionllm"] = visionllm
    return v2_client.post("/v1/chat/completions", json=body)


def test_a_chat_without_an_image_answers_the_images_its_reply_made_as_content_parts(v2_client, calls):
    answer = chat(v2_client, [{"role": "user", "content": DRAW}], seed=3, steps=2)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    text, picture = body["choices"][0]["message"]["content"]
    assert text == {"type": "text", "text": "[GEN]"} and picture["type"] == "image_url"
    assert decoded_png(picture["image_url"]["url"]).size == (16, 16)
    [made] = body["visionllm"]["images"]
    assert made["image"] == picture["image_url"]["url"] and made["seed"] == 3
    assert body["visionllm"]["output"] == "text" and body["visionllm"]["image_size"] is None
    images, instructions, kwargs = calls[-1]
    assert images == [None] and instructions == [DRAW] and (kwargs["seed"], kwargs["steps"]) == (3, 2)


def test_a_reply_that_made_no_image_keeps_plain_text_content(v2_client):
    answer = chat(v2_client, [{"role": "user", "content": "Hello, what can you draw?"}])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert isinstance(body["choices"][0]["message"]["content"], str) and "images" not in body["visionllm"]


def test_chat_names_the_generation_task_in_its_extra_body_and_streams_the_image_in_the_last_chunk(v2_client):
    messages = [{"role": "user", "content": "a blue square"}]
    plain = chat(v2_client, messages, task="generation", seed=9).json()
    [_, picture] = plain["choices"][0]["message"]["content"]
    assert plain["visionllm"]["output"] == "image" and picture["image_url"]["url"] == plain["visionllm"]["image"]
    body = {"model": "micro-v2", "messages": messages, "stream": True, "visionllm": {"task": "generation", "seed": 9}}
    with v2_client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(isinstance(c["choices"][0]["delta"].get("content", ""), str) for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["visionllm"]["image"] == plain["visionllm"]["image"]  # the same seed, the same image


def test_a_chat_about_an_image_may_edit_it(v2_client):
    photo = {"type": "image_url", "image_url": {"url": to_data_url(Image.fromarray(PHOTO))}}
    messages = [{"role": "user", "content": [photo, {"type": "text", "text": "make the circle green"}]}]
    answer = chat(v2_client, messages, task="editing")
    assert answer.status_code == 200, answer.text
    [_, picture] = answer.json()["choices"][0]["message"]["content"]
    assert decoded_png(picture["image_url"]["url"]).size == (56, 40)


def test_a_chat_without_an_image_is_refused_for_a_task_that_reads_one(v2_client):
    answer = chat(v2_client, [{"role": "user", "content": "detect: circle"}])
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "detection reads an image" in error["message"] and "image_url" in error["message"]


def test_a_v1_model_refuses_generation_and_image_less_chat(micro_model):
    with TestClient(create_app(micro_model, ServerSettings(model_id="micro", samples=1))) as v1:
        answer = generate(v1)
        refused = chat(v1, [{"role": "user", "content": DRAW}], model="micro")
    message = answer.json()["error"]["message"]
    assert answer.status_code == 400 and "does not answer the task 'generation'" in message and "detection" in message
    assert refused.status_code == 400 and "image_url" in refused.json()["error"]["message"]


@pytest.fixture(scope="module")
def plain_v2_model():
    """The toy v2 model without its image decoders."""
    torch.manual_seed(0)
    section = {k: v for k, v in copy.deepcopy(MICRO_V2).items() if k not in ("generation", "editing")}
    section["link"] = {"routes": ["[DET]", "[GRD]", "[SEG]", "[POSE]"]}
    return VisionLLMv2(VisionLLMv2Config.from_dict(section)).eval()


def test_a_v2_model_without_image_decoders_neither_offers_nor_answers_them(plain_v2_model):
    with TestClient(create_app(plain_v2_model, ServerSettings(model_id="plain", samples=1))) as plain:
        tasks = [t["task"] for t in plain.get("/v1/tasks").json()["data"]]
        answer = generate(plain)
        edit = {"task": "editing", "edit": "x", "image": to_data_url(Image.fromarray(PHOTO))}
        edited = plain.post("/v1/predict", json=edit)
    assert "detection" in tasks and not {"generation", "editing"} & set(tasks)
    for refused, task in ((answer, "generation"), (edited, "editing")):
        assert refused.status_code == 400, refused.text
        message = refused.json()["error"]["message"]
        assert f"does not answer the task {task!r}" in message and "region_caption" in message


def test_an_image_answer_is_its_own_json():
    made = GeneratedImage(np.zeros((3, 5, 3), np.uint8), "a dot", 2)
    body = result_json(Decoded(made))
    assert body["output"] == "image" and (body["width"], body["height"], body["seed"]) == (5, 3, 2)
    assert message_content("ok", body) == [
        {"type": "text", "text": "ok"},
        {"type": "image_url", "image_url": {"url": body["image"]}},
    ]
    assert message_content("ok", result_json(Decoded(TextAnswer("ok")))) == "ok"
