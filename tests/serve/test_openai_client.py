"""The official `openai` client against a live local server running the shipped model."""

import numpy as np
import pytest
from openai import APIStatusError, OpenAI

from visionllm.data.shapes.dataset import make_image
from visionllm.data.shapes.scene import ShapesWorldConfig
from visionllm.ops.boxes import box_iou
from visionllm.serve.app import ServerSettings, create_app

from .conftest import png_data_url

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(shipped_model, live_server):
    app = create_app(shipped_model, ServerSettings(model_id="visionllm-v1-tiny", samples=1, max_wait_ms=20))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def scene(shipped_model):
    record = make_image(11, "val", 3, ShapesWorldConfig(image_size=shipped_model.config.image_size))
    return record, png_data_url(record.rendered.image)


def user(text, url):
    return [
        {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}
    ]


def test_models_list(server):
    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["visionllm-v1-tiny"]


def test_detection_through_the_openai_client(server, scene):
    record, url = scene
    classes = sorted({obj.category for obj in record.facts})
    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="visionllm-v1-tiny", messages=user("detect: " + ", ".join(classes), url)
    )
    message = completion.choices[0].message
    extra = completion.model_extra["visionllm"]
    assert extra["task"] == "detection" and extra["output"] == "detections"
    detections = extra["detections"]
    assert detections, "the shipped model found nothing in a ShapesWorld image"
    assert {d["class_name"] for d in detections} <= set(classes)
    assert message.role == "assistant" and message.content.startswith(f"{len(detections)} object")
    # every box is inside the image, and the best one covers a real object of its class
    size = record.rendered.image.shape[1]
    boxes = np.array([d["box_xyxy_px"] for d in detections])
    assert (boxes >= 0).all() and (boxes <= size).all()
    truth = np.array([obj.box_xyxy_px for obj in record.facts if obj.category == detections[0]["class_name"]])
    assert box_iou(boxes[:1], truth).max() >= 0.5


def test_caption_through_the_openai_client_plain_and_streamed(server, scene):
    _, url = scene
    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    plain = client.chat.completions.create(model="visionllm-v1-tiny", messages=user("caption", url))
    text = plain.choices[0].message.content
    assert plain.model_extra["visionllm"]["task"] == "caption" and len(text.split()) >= 2
    stream = client.chat.completions.create(model="visionllm-v1-tiny", messages=user("caption", url), stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert len([p for p in pieces if p]) > 1  # it really streamed, piece by piece
    assert "".join(pieces) == text


def test_client_errors_come_back_as_api_errors(server, scene):
    _, url = scene
    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    with pytest.raises(APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=user("caption", url))
    assert caught.value.status_code == 404 and "unknown model" in str(caught.value)
    with pytest.raises(APIStatusError) as caught:
        client.chat.completions.create(model="visionllm-v1-tiny", messages=user("caption", "data:image/png;base64,!!"))
    assert caught.value.status_code == 400 and "base64" in str(caught.value)
