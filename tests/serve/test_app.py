"""The HTTP app on a tiny random model: every route, the OpenAI shapes, streaming, and every kind of bad input."""

import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from visionllm.serve.app import ServerSettings, create_app
from visionllm.serve.images import ImageLimits


@pytest.fixture(scope="module")
def client(micro_model):
    settings = ServerSettings(
        model_id="micro",
        max_body_bytes=200_000,
        limits=ImageLimits(max_bytes=100_000, max_pixels=512 * 512),
        samples=2,
    )
    with TestClient(create_app(micro_model, settings)) as test_client:
        yield test_client


def detect_body(image_url, **extra):
    return {"image": image_url, "task": "detection", "classes": ["circle", "square"], "min_score": 0.0, **extra}


def test_health_models_tasks_samples_and_page(client):
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["micro"]
    tasks = {t["task"]: t for t in client.get("/v1/tasks").json()["data"]}
    assert tasks["detection"]["fields"] == ["classes"] and tasks["caption"]["output"] == "text"
    samples = client.get("/v1/samples").json()["data"]
    assert len(samples) == 2
    picture = client.get(samples[0]["url"])
    assert picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size == (64, 64)
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="prompt-layer">' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_predict_detection_returns_typed_detections_and_a_picture(client, image_url):
    response = client.post("/v1/predict", json=detect_body(image_url, render=True))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "detection" and body["output"] == "detections" and body["image_size"] == [56, 40]
    assert '{"circle": <c0>, "square": <c1>}' in body["instruction"]
    for item in body["detections"]:
        assert item["class_name"] in ("circle", "square") and 0 <= item["score"] <= 1
        x1, y1, x2, y2 = item["box_xyxy_px"]
        assert 0 <= x1 <= x2 <= 56 and 0 <= y1 <= y2 <= 40
    picture = Image.open(io.BytesIO(base64.b64decode(body["visualization"].split(",", 1)[1])))
    assert picture.width >= 512  # drawn at a readable scale


def test_predict_text_tasks_and_free_instructions(client, image_url):
    caption = client.post("/v1/predict", json={"image": image_url, "task": "caption"}).json()
    assert caption["output"] == "text" and isinstance(caption["text"], str)
    vqa = client.post("/v1/predict", json={"image": image_url, "task": "vqa", "question": "how many?"}).json()
    assert vqa["task"] == "vqa" and "how many?" in vqa["instruction"]
    free = client.post("/v1/predict", json={"image": image_url, "instruction": "Please generate a caption."})
    assert free.status_code == 200 and free.json()["task"] == "instruction"


def test_chat_completion_has_the_openai_shape_and_the_structured_extra(client, image_url):
    body = {
        "model": "micro",
        "temperature": 0.2,  # accepted and ignored
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "detect: circle"},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ],
            },
        ],
        "visionllm": {"min_score": 0.0},
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion" and data["model"] == "micro"
    message = data["choices"][0]["message"]
    assert message["role"] == "assistant" and data["choices"][0]["finish_reason"] == "stop"
    extra = data["visionllm"]
    assert extra["task"] == "detection" and extra["output"] == "detections"
    assert message["content"].startswith(f"{len(extra['detections'])} object") or message["content"] == (
        "No objects found."
    )


def sse_events(response):
    events = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_streaming_sends_openai_chunks_that_add_up_to_the_answer(client, image_url):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": "caption"}],
        }
    ]
    plain = client.post("/v1/chat/completions", json={"model": "micro", "messages": messages}).json()
    with client.stream(
        "POST", "/v1/chat/completions", json={"model": "micro", "messages": messages, "stream": True}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        r.read()
        chunks = sse_events(r)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["visionllm"]["task"] == "caption"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]


def tiff_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    return "data:image/tiff;base64," + base64.b64encode(buffer.getvalue()).decode()


def big_png_url(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


BAD_REQUESTS = [
    ("bad json", dict(content=b'{"image": "x", "task": '), 400, "not valid JSON"),
    ("not an object", dict(json=[1, 2]), 400, "invalid request"),
    ("missing image", dict(json={"task": "caption"}), 400, "image"),
    ("unknown field", dict(json={"image": "x", "task": "caption", "colour": 1}), 400, "colour"),
    ("bad base64", dict(json={"image": "data:image/png;base64,%%%", "task": "caption"}), 400, "base64"),
    ("unsupported format", dict(json={"image": tiff_url(), "task": "caption"}), 415, "PNG, JPEG"),
    ("too many pixels", dict(json={"image": big_png_url(1000), "task": "caption"}), 413, "pixels"),
    ("unknown task", dict(json={"image": "x", "task": "teleport"}), 400, "does not answer"),
    ("v2 task", dict(json={"image": "x", "task": "editing"}), 400, "does not answer"),
    (
        "too many classes",
        dict(json={"image": "x", "task": "detection", "classes": [f"c{i}" for i in range(17)]}),
        400,
        "class",
    ),
    ("unknown model", dict(json={"model": "gpt-9", "image": "x", "task": "caption"}), 404, "unknown model"),
    ("score out of range", dict(json={"image": "x", "task": "caption", "min_score": 3}), 400, "min_score"),
    ("body too large", dict(json={"image": "A" * 300_000, "task": "caption"}), 413, "request body"),
]


@pytest.mark.parametrize(("name", "request_args", "status", "words"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(client, image_url, name, request_args, status, words):
    headers = {"content-type": "application/json"} if "content" in request_args else None
    response = client.post("/v1/predict", headers=headers, **request_args)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert client.post("/v1/predict", json={"image": image_url, "task": "caption"}).status_code == 200


def test_chat_errors_are_4xx(client, image_url):
    no_image = {"model": "micro", "messages": [{"role": "user", "content": "hello"}]}
    assert client.post("/v1/chat/completions", json=no_image).status_code == 400
    wrong_model = {"model": "other", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/v1/chat/completions", json=wrong_model)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    bad_role = {"model": "micro", "messages": [{"role": "robot", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=bad_role).status_code == 400
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/predict").status_code == 405


def test_api_key_guards_the_api_but_not_the_page(micro_model, image_url):
    settings = ServerSettings(model_id="micro", api_key="s3cret", samples=1)
    with TestClient(create_app(micro_model, settings)) as client:
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
        refused = client.get("/v1/models")
        assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.post(
            "/v1/predict", json={"image": image_url, "task": "caption"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
