"""Hostile and careless input at the server's edge: bounded prompts, valid text, strict parameters, the key checked
first, connections that survive errors, and the work of clients that went away cancelled."""

import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from visionllm.serve.app import ServerSettings, create_app


class Spy:
    """The micro model, counting the predict calls that reach it, optionally slow or failing on a word."""

    def __init__(self, model, delay=0.0, fail_on=None):
        self.model = model
        self.config = model.config
        self.version = model.version
        self.TASKS = model.TASKS
        self.delay = delay
        self.fail_on = fail_on
        self.instructions = []

    def check_request(self, instruction, max_prompt_tokens=None):
        return self.model.check_request(instruction, max_prompt_tokens)

    def predict(self, images, instructions, **kwargs):
        texts = [getattr(i, "text", i) for i in instructions]
        self.instructions.extend(texts)
        time.sleep(self.delay)
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise RuntimeError("the model broke")
        return self.model.predict(images, instructions, **kwargs)


@pytest.fixture
def spy(micro_model):
    return Spy(micro_model)


@pytest.fixture
def client(spy):
    settings = ServerSettings(model_id="micro", samples=1, max_prompt_tokens=200)
    with TestClient(create_app(spy, settings)) as test_client:
        yield test_client


def post_escaped(client, route, body):
    """POST JSON written with \\u escapes, as a client may send a lone surrogate."""
    return client.post(route, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def vqa(image_url, question, **extra):
    return {"image": image_url, "task": "vqa", "question": question, **extra}


def chat(image_url, text, **extra):
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}]
    return {"model": "micro", "messages": [{"role": "user", "content": content}], **extra}


def test_over_long_prompts_are_refused_in_tokens_before_any_model_work(client, spy, image_url):
    for question in ("what " * 300, "x" * 100_000):  # over the server's 200 tokens; far over in characters
        response = client.post("/v1/predict", json=vqa(image_url, question))
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert "over the limit of 200 tokens" in error["message"] and error["param"] == "instruction"
    long_chat = client.post("/v1/chat/completions", json=chat(image_url, "why " * 300))
    assert long_chat.status_code == 400 and "tokens" in long_chat.json()["error"]["message"]
    assert spy.instructions == []
    assert client.post("/v1/predict", json=vqa(image_url, "what " * 50)).status_code == 200


def test_the_model_refuses_over_long_prompts_in_the_python_api_too(micro_model):
    from visionllm.models.common.inputs import ProcessorError

    limit = micro_model.config.decoder.max_prompt_tokens
    with pytest.raises(ProcessorError, match=f"over the limit of {limit} tokens"):
        micro_model.predict([np.zeros((8, 8, 3), np.uint8)], ["why " * (limit + 10) + "<image>"])
    assert micro_model.check_request("Describe <image>.") < micro_model.check_request("Why " * 50 + "<image>")


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("question", lambda url: vqa(url, "x \ud800")),
        ("classes", lambda url: {"image": url, "task": "detection", "classes": ["circle", "bad \udfff"]}),
        ("expression", lambda url: {"image": url, "task": "grounding", "expression": "\ud83d the circle"}),
        ("instruction", lambda url: {"image": url, "instruction": "Describe <image> \ud800"}),
    ],
)
def test_text_that_is_not_unicode_is_refused_at_the_edge(client, spy, image_url, field, body):
    response = post_escaped(client, "/v1/predict", body(image_url))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "lone surrogate" in error["message"] and error["param"] == field
    assert spy.instructions == []


def test_chat_text_that_is_not_unicode_is_refused(client, spy, image_url):
    response = post_escaped(client, "/v1/chat/completions", chat(image_url, "what is \ud800 this?"))
    assert response.status_code == 400 and "lone surrogate" in response.json()["error"]["message"]
    assert spy.instructions == []


def test_class_tokens_the_model_does_not_have_are_refused(client, spy, image_url):
    names = ", ".join(f'"c{i}": <c{i}>' for i in range(17))  # the micro model has <c0>..<c15>
    for instruction in (f"Detect {{{names}}} in <image>.", 'Detect {"a": <c69>} in <image>.'):
        response = client.post("/v1/predict", json={"image": image_url, "instruction": instruction})
        assert response.status_code == 400, response.text
        assert "<c0>..<c15>" in response.json()["error"]["message"]
    assert spy.instructions == []


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/chat/completions", lambda url: chat(url, "caption", stream="yes"), "stream"),
        ("/v1/chat/completions", lambda url: chat(url, "caption", stream=1), "stream"),
        ("/v1/predict", lambda url: {"image": url, "task": "caption", "render": "yes"}, "render"),
        ("/v1/predict", lambda url: {"image": url, "task": "caption", "min_score": True}, "min_score"),
        ("/v1/predict", lambda url: {"image": url, "task": "caption", "min_score": "0.5"}, "min_score"),
        ("/v1/predict", lambda url: {"image": url, "task": "caption", "points": True}, "points"),
    ],
)
def test_loose_parameters_are_refused(client, image_url, route, body, param):
    response = client.post(route, json=body(image_url))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].endswith(param)


def test_the_api_key_is_checked_before_the_body_is_read_and_guards_every_v1_route(micro_model, image_url):
    settings = ServerSettings(model_id="micro", api_key="s3cret", samples=1, max_body_bytes=1000)
    with TestClient(create_app(micro_model, settings)) as client:
        assert client.get("/v1/samples").status_code == 401
        bad_json = client.post("/v1/predict", content=b'{"image": ', headers={"content-type": "application/json"})
        assert bad_json.status_code == 401
        too_big = client.post("/v1/predict", content=b"x" * 5000)
        assert too_big.status_code == 401
        key = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/samples", headers=key).status_code == 200
        assert client.post("/v1/predict", content=b"x" * 5000, headers=key).status_code == 413


def test_a_500_keeps_the_connection_usable(micro_model, image_url, live_server):
    spy = Spy(micro_model, fail_on="boom")
    with live_server(create_app(spy, ServerSettings(model_id="micro", samples=1))) as url, httpx.Client() as http:
        for _ in range(3):
            broken = http.post(f"{url}/v1/predict", json=vqa(image_url, "boom?"))
            assert broken.status_code == 500 and broken.json()["error"]["type"] == "server_error"
            ok = http.post(f"{url}/v1/predict", json=vqa(image_url, "what?"))
            assert ok.status_code == 200, ok.text


def post_and_hang_up(url, body, route="/v1/predict"):
    """Send a request and close the connection without waiting for the answer."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        time.sleep(0.1)


def test_work_of_clients_that_went_away_is_cancelled(micro_model, image_url, live_server):
    spy = Spy(micro_model, delay=1.0)
    settings = ServerSettings(model_id="micro", samples=1, max_batch_size=1, max_wait_ms=0)
    with live_server(create_app(spy, settings)) as url, httpx.Client(timeout=30) as http:
        first = threading.Thread(
            target=http.post, args=(f"{url}/v1/predict",), kwargs={"json": vqa(image_url, "first?")}
        )
        first.start()
        time.sleep(0.3)  # the worker is busy with it
        for i in range(4):
            post_and_hang_up(url, vqa(image_url, f"dropped {i}?"))
        post_and_hang_up(url, chat(image_url, "dropped stream?", stream=True), "/v1/chat/completions")
        first.join()
        last = http.post(f"{url}/v1/predict", json=vqa(image_url, "last?"))
        assert last.status_code == 200
        health = http.get(f"{url}/health").json()
    asked = [t for t in spy.instructions if "?" in t]
    assert not any("dropped" in t for t in asked), asked
    assert health["cancelled"] == 5 and health["pending"] == 0 and health["pending_tokens"] == 0
