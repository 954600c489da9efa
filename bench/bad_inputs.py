"""Benchmark: bad, odd and hostile input to the server and the CLI, and what each gets back.

    python bench/bad_inputs.py --model checkpoints/visionllm-v1-tiny

Server: a real `visionllm serve` process (API key on, small body limit) gets a few hundred requests over HTTP,
grouped by the kind of input; each has the status it must get. Odd but valid input must be answered (200); bad
input must get a clean 4xx with a JSON error body; nothing may get a 5xx or stop the server. Some clients send half
a request, or a whole one, and hang up; one client keeps its connection across errors and must keep being served.

CLI: `visionllm` commands with bad arguments, damaged checkpoints, malformed COCO files and presets, and output
paths that cannot be written: each must exit with status 2 and print one line on stderr, no traceback.

The totals and a table per kind go to docs/RELIABILITY.md (section `bad_inputs`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from harness import hang_up, machine, running_server, update_section
from visionllm.cli import main as cli_main
from visionllm.data.shapes.dataset import make_image
from visionllm.data.shapes.scene import ShapesWorldConfig

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}
BODY_LIMIT = 1_000_000
OK, BAD, AUTH_ERR = {200}, {400}, {401}


@dataclass
class Case:
    group: str
    name: str
    expected: set[int]
    path: str = "/v1/predict"
    method: str = "POST"
    body: bytes | None = None
    headers: dict | None = None


def encode(value) -> bytes:
    """JSON with \\u escapes, so that lone surrogates go over the wire as a client may send them."""
    return json.dumps(value).encode()


def png(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def picture(fmt: str, mode: str = "RGB", size=(40, 30), **save) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode in ("L", "P", "1") else None).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (200, 30, 30)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def server_cases(image: str) -> list[Case]:
    cases: list[Case] = []

    def add(group, name, expected, body=None, path="/v1/predict", method="POST", headers=None, raw=None):
        data = raw if raw is not None else (encode(body) if body is not None else None)
        cases.append(Case(group, name, set(expected), path, method, data, {**AUTH, **JSON, **(headers or {})}))

    caption = {"image": image, "task": "caption"}
    detect = {"image": image, "task": "detection", "classes": ["red circle", "square"], "min_score": 0.1}

    # Odd but valid: each must be answered.
    add("valid, odd", "caption", OK, caption)
    add("valid, odd", "detection", OK, detect)
    add("valid, odd", "render", OK, {**detect, "render": True})
    add("tasks", "duplicate class names", BAD, {**detect, "classes": ["circle", "circle"]})
    add("valid, odd", "64 classes (the model's limit)", OK, {**detect, "classes": [f"thing {i}" for i in range(64)]})
    add("valid, odd", "segmentation, 3 points", OK, {**detect, "task": "instance_segmentation", "points": 3})
    add("valid, odd", "32 points (the model's most)", OK, {**detect, "task": "instance_segmentation", "points": 32})
    add("tasks", "segmentation, 33 points", BAD, {**detect, "task": "instance_segmentation", "points": 33})
    add("valid, odd", "min_score 0 and 1", OK, {**detect, "min_score": 0})
    add("valid, odd", "min_score 1", OK, {**detect, "min_score": 1})
    for name, text in [
        ("NUL character", "what\u0000 colour?"),
        ("emoji", "how many 🔺 are there? 🤔"),
        ("right-to-left text", "ما لون الدائرة؟"),
        ("combining characters", "is the Z̷͉a̸l̵g̶o circle red?"),
        ("zero-width characters", "is\u200b there\u200d a\ufeff star?"),
        ("codec tokens in the text", "is <c0> a <p5> <fmt> <image-less> star?"),
        ("only spaces after a word", "what" + " " * 500),
        ("markup", "<script>alert(1)</script> what colour?"),
    ]:
        add("valid, odd", name, OK, {"image": image, "task": "vqa", "question": text})
    for name, data in [
        ("grayscale PNG", picture("PNG", "L")),
        ("RGBA PNG", picture("PNG", "RGBA")),
        ("palette PNG", picture("PNG", "P")),
        ("1-bit PNG", picture("PNG", "1")),
        ("16-bit PNG", png(np.full((20, 30), 40000, np.uint16))),
        ("1x1 PNG", picture("PNG", size=(1, 1))),
        ("1000x1 PNG", picture("PNG", size=(1000, 1))),
        ("JPEG", picture("JPEG")),
        ("CMYK JPEG", picture("JPEG", "CMYK")),
        ("EXIF-rotated JPEG", rotated_jpeg()),
        ("WEBP", picture("WEBP")),
        ("BMP", picture("BMP")),
        ("GIF", picture("GIF", "P")),
    ]:
        add("valid, odd", name, OK, {**caption, "image": data_url(data)})
    add("valid, odd", "bare base64", OK, {**caption, "image": image.split(",", 1)[1]})
    add(
        "valid, odd",
        "base64 with line breaks",
        OK,
        {**caption, "image": "\n".join(image[i : i + 76] for i in range(0, len(image), 76))},
    )
    add(
        "valid, odd",
        "unknown JSON key in chat (ignored)",
        OK,
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}],
            "n": 3,
            "temperature": 9,
        },
        path="/v1/chat/completions",
    )

    # JSON syntax: a valid body cut short at many places, and other non-JSON.
    whole = encode(detect)
    for cut in np.linspace(1, len(whole) - 1, 40).astype(int):
        add("JSON syntax", f"cut at byte {cut}", BAD, raw=whole[:cut])
    for name, raw in [
        ("empty", b""),
        ("space", b" "),
        ("garbage", b"\x00\xff\xfe"),
        ("NaN literal", b'{"image": NaN}'),
        ("two objects", b"{}{}"),
        ("trailing comma", b'{"task": "caption",}'),
        ("single quotes", b"{'task': 'caption'}"),
        ("invalid UTF-8", b'{"task": "\xff\xfe"}'),
        ("deep nesting", b"[" * 5000 + b"]" * 5000),
    ]:
        add("JSON syntax", name, BAD, raw=raw)

    # Schema: wrong shapes and types.
    for name, body in [
        ("null", None),
        ("array", [caption]),
        ("number", 3),
        ("string", "caption"),
        ("missing image", {"task": "caption"}),
        ("missing task", {"image": image}),
        ("unknown field", {**caption, "colour": "red"}),
        ("image is a number", {**caption, "image": 5}),
        ("image is a list", {**caption, "image": [image]}),
        ("task is a number", {**caption, "task": 5}),
        ("classes is a string", {**detect, "classes": "circle"}),
        ("classes holds numbers", {**detect, "classes": [1, 2]}),
        ("classes holds null", {**detect, "classes": [None]}),
        ("question is a list", {**caption, "task": "vqa", "question": ["what?"]}),
        ("points is a string", {**detect, "task": "instance_segmentation", "points": "16"}),
        ("points is true", {**detect, "task": "instance_segmentation", "points": True}),
        ("points is 2.5", {**detect, "task": "instance_segmentation", "points": 2.5}),
        ("points is 2", {**detect, "task": "instance_segmentation", "points": 2}),
        ("points is -1", {**detect, "task": "instance_segmentation", "points": -1}),
        ("points is 65 (over the model's)", {**detect, "task": "instance_segmentation", "points": 65}),
        ("points is 10**12", {**detect, "task": "instance_segmentation", "points": 10**12}),
        ("min_score is true", {**detect, "min_score": True}),
        ("min_score is a string", {**detect, "min_score": "0.5"}),
        ("min_score is -0.1", {**detect, "min_score": -0.1}),
        ("min_score is 1.5", {**detect, "min_score": 1.5}),
        ("min_score is null", {**detect, "min_score": None}),
        ("min_score is 1e308", {**detect, "min_score": 1e308}),
        ("render is 'yes'", {**detect, "render": "yes"}),
        ("render is 1", {**detect, "render": 1}),
        ("model is a number", {**caption, "model": 5}),
    ]:
        add("schema", name, BAD, raw=encode(body) if name != "null" else b"null")
    add("schema", "unknown model", {404}, {**caption, "model": "gpt-9"})
    add("schema", "JSON sent as text/plain", BAD, headers={"content-type": "text/plain"}, raw=encode(caption))
    add(
        "schema",
        "JSON sent as form data",
        BAD,
        headers={"content-type": "application/x-www-form-urlencoded"},
        raw=b"task=caption",
    )

    # Images.
    garbage = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
    good_png = picture("PNG")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    for name, reference, expected in [
        ("empty", "", BAD),
        ("spaces", "   ", BAD),
        ("http URL", "http://example.com/a.png", BAD),
        ("https URL", "https://example.com/a.png", BAD),
        ("data URL without base64", "data:image/png,abc", BAD),
        ("bad base64 characters", "data:image/png;base64,%%%%", BAD),
        ("base64 of random bytes", data_url(garbage), {415}),
        ("text as an image", data_url(b"hello world", "text/plain"), {415}),
        ("SVG", data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"), {415}),
        ("TIFF", data_url(picture("TIFF")), {415}),
        ("PDF", data_url(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj<<>>endobj\n", "application/pdf"), {415}),
        ("decompression bomb", data_url(bomb.getvalue()), {413}),
        ("over the byte limit", data_url(b"\x89PNG" + bytes(800_000)), {413}),
        ("local path, none allowed", "/etc/passwd", BAD),
        ("file URL", "file:///etc/passwd", BAD),
        ("relative path", "../../etc/passwd", BAD),
        ("PNG signature only", data_url(good_png[:8]), {400, 415}),
    ]:
        add("images", name, expected, {**caption, "image": reference})
    for cut in (0.3, 0.5, 0.7, 0.9, 0.97):
        add(
            "images",
            f"PNG cut at {cut:.0%}",
            {400, 415} if cut < 0.8 else {200, 400, 415},  # past the image data only the end marker is lost
            {**caption, "image": data_url(good_png[: int(len(good_png) * cut)])},
        )
    jpeg = picture("JPEG", size=(64, 64))
    for cut in (0.2, 0.5, 0.8):
        add(
            "images",
            f"JPEG cut at {cut:.0%}",
            {200, 400, 415},
            {**caption, "image": data_url(jpeg[: int(len(jpeg) * cut)])},
        )

    # Tasks and their fields.
    for name, body in [
        ("unknown task", {**caption, "task": "teleport"}),
        ("empty task", {**caption, "task": ""}),
        *[
            (f"v2 task {t}", {**caption, "task": t})
            for t in ("editing", "generation", "semantic_segmentation", "interactive_segmentation", "region_caption")
        ],
        ("detection without classes", {**caption, "task": "detection"}),
        ("detection with blank classes", {**caption, "task": "detection", "classes": ["", "  "]}),
        ("vqa without a question", {**caption, "task": "vqa"}),
        ("vqa with a blank question", {**caption, "task": "vqa", "question": "   "}),
        ("grounding without an expression", {**caption, "task": "grounding"}),
        ("empty instruction", {"image": image, "instruction": "  "}),
        ("two <image> markers", {"image": image, "instruction": "<image> and <image>"}),
    ]:
        add("tasks", name, BAD, body)

    # Class tokens the model does not have.
    for count in (65, 70, 200, 5000):
        add("classes", f"{count} classes", BAD, {**detect, "classes": [f"c{i}" for i in range(count)]})
    for name, instruction in [
        ("class token <c64>", 'Find {"a": <c64>} in <image>.'),
        ("class token <c99999999999999999999>", 'Find {"a": <c99999999999999999999>} in <image>.'),
        ("binding of 70 classes", "Find {" + ", ".join(f'"n{i}": <c{i}>' for i in range(70)) + "} in <image>."),
    ]:
        add("classes", name, BAD, {"image": image, "instruction": instruction})

    # Prompt length.
    for name, body in [
        ("question of 3,000 words", {**caption, "task": "vqa", "question": "why " * 3000}),
        ("question of 100,000 characters", {**caption, "task": "vqa", "question": "x" * 100_000}),
        ("question of 280 KB", {**caption, "task": "vqa", "question": "what colour is it " * 15_500}),
        ("class name of 20,000 characters", {**detect, "classes": ["red " * 5000]}),
        ("expression of 50,000 characters", {**caption, "task": "grounding", "expression": "the " * 12_500}),
        ("instruction of 40,000 characters", {"image": image, "instruction": "Describe <image> " + "please " * 5000}),
    ]:
        add("prompt length", name, BAD, body)
    add("prompt length", "body over the limit", {413}, {**caption, "task": "vqa", "question": "x" * (BODY_LIMIT + 10)})

    # Text that is not valid Unicode (lone surrogates).
    for name, body in [
        ("question", {**caption, "task": "vqa", "question": "x \ud800"}),
        ("question, low surrogate", {**caption, "task": "vqa", "question": "\udfff?"}),
        ("class name", {**detect, "classes": ["circle", "bad \ud800"]}),
        ("expression", {**caption, "task": "grounding", "expression": "the \ud83d circle"}),
        ("instruction", {"image": image, "instruction": "Describe <image> \ud800"}),
        ("task name", {**caption, "task": "cap\ud800tion"}),
        ("model name", {**caption, "model": "\ud800"}),
    ]:
        add("text encoding", name, BAD if name != "model name" else {404}, body)
    chat_surrogate = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what \ud800?"},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            }
        ],
    }
    add("text encoding", "chat text", BAD, chat_surrogate, path="/v1/chat/completions")

    # The API key: checked first, on every /v1 route.
    for route, method in [
        ("/v1/models", "GET"),
        ("/v1/tasks", "GET"),
        ("/v1/samples", "GET"),
        ("/v1/predict", "POST"),
        ("/v1/chat/completions", "POST"),
    ]:
        for name, headers in [
            ("no key", {"Authorization": ""}),
            ("wrong key", {"Authorization": "Bearer nope"}),
            ("lowercase scheme", {"Authorization": f"bearer {KEY}"}),
            ("key without scheme", {"Authorization": KEY}),
        ]:
            add(
                "API key",
                f"{method} {route}, {name}",
                AUTH_ERR,
                path=route,
                method=method,
                headers=headers,
                raw=b"{" if method == "POST" else None,
            )
    add("API key", "bad JSON and no key", AUTH_ERR, headers={"Authorization": ""}, raw=b'{"image": ')
    add("API key", "huge body and no key", AUTH_ERR, headers={"Authorization": ""}, raw=b"x" * (BODY_LIMIT + 10))

    # Routes and methods.
    for name, method, path, expected in [
        ("GET on predict", "GET", "/v1/predict", {405}),
        ("DELETE on predict", "DELETE", "/v1/predict", {405}),
        ("PUT on chat", "PUT", "/v1/chat/completions", {405}),
        ("unknown route", "GET", "/v1/nothing", {404}),
        ("sample out of range", "GET", "/samples/99.png", {404}),
        ("negative sample", "GET", "/samples/-1.png", {404}),
        ("sample not a number", "GET", "/samples/x.png", {400, 404}),
        ("path traversal", "GET", "/static/../../etc/passwd", {404}),
        ("encoded traversal", "GET", "/static/%2e%2e/%2e%2e/etc/passwd", {404}),
    ]:
        add("routes", name, expected, path=path, method=method)

    # Chat.
    def chat(messages, **extra):
        return {"model": "m", "messages": messages, **extra}

    image_part = {"type": "image_url", "image_url": {"url": image}}
    for name, body, expected in [
        ("no messages", {"model": "m"}, BAD),
        ("empty messages", chat([]), BAD),
        ("no model", {"messages": [{"role": "user", "content": [image_part]}]}, BAD),
        ("wrong model", chat([{"role": "user", "content": [image_part]}], model="other"), {404}),
        ("no user message", chat([{"role": "system", "content": "hi"}]), BAD),
        ("no image", chat([{"role": "user", "content": "hello"}]), BAD),
        ("image part without image_url", chat([{"role": "user", "content": [{"type": "image_url"}]}]), BAD),
        ("image_url is a number", chat([{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]), BAD),
        ("unknown part type", chat([{"role": "user", "content": [{"type": "audio"}]}]), BAD),
        ("unknown role", chat([{"role": "robot", "content": [image_part]}]), BAD),
        ("content is a number", chat([{"role": "user", "content": 5}]), BAD),
        ("stream is 'yes'", chat([{"role": "user", "content": [image_part]}], stream="yes"), BAD),
        ("stream is 1", chat([{"role": "user", "content": [image_part]}], stream=1), BAD),
        ("visionllm task unknown", chat([{"role": "user", "content": [image_part]}], visionllm={"task": "x"}), BAD),
        ("visionllm field unknown", chat([{"role": "user", "content": [image_part]}], visionllm={"colour": 1}), BAD),
        (
            "bad image in chat",
            chat(
                [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%"}}]}]
            ),
            BAD,
        ),
        (
            "detect with no classes",
            chat([{"role": "user", "content": [image_part, {"type": "text", "text": "detect:"}]}]),
            BAD,
        ),
        ("a stream", chat([{"role": "user", "content": [image_part]}], stream=True), OK),
        (
            "a long question",
            chat([{"role": "user", "content": [image_part, {"type": "text", "text": "why " * 3000}]}]),
            BAD,
        ),
    ]:
        add("chat", name, expected, body, path="/v1/chat/completions")
    return cases


def send(client: httpx.Client, case: Case) -> tuple[int, bool]:
    """(status, whether an error answer had the JSON error body)."""
    response = client.request(case.method, case.path, content=case.body, headers=case.headers)
    if response.status_code < 400:
        return response.status_code, True
    try:
        error = response.json()["error"]
        clean = isinstance(error["message"], str) and bool(error["message"]) and "Traceback" not in error["message"]
    except (ValueError, KeyError, TypeError):
        clean = False
    return response.status_code, clean


def run_server(model: Path, image: str) -> dict:
    cases = server_cases(image)
    rows: dict[str, Counter] = defaultdict(Counter)
    expected: dict[str, set[int]] = defaultdict(set)
    unexpected: list[str] = []
    extra = ["--api-key", KEY, "--max-body-bytes", str(BODY_LIMIT), "--max-batch-size", "4", "--model-id", "m"]
    log = Path(tempfile.gettempdir()) / "bad_inputs_server.log"
    with (
        running_server(model, extra, log=log) as (process, url),
        httpx.Client(base_url=url, timeout=120) as client,
    ):  # one connection for all
        for case in cases:
            status, clean = send(client, case)
            row = rows[case.group]
            row["tried"] += 1
            expected[case.group] |= case.expected
            row["as expected"] += status in case.expected
            row["4xx"] += 400 <= status < 500
            row["clean 4xx"] += 400 <= status < 500 and clean
            row["5xx"] += status >= 500
            if status not in case.expected or not clean:
                unexpected.append(f"{case.group} / {case.name}: got {status}, expected {sorted(case.expected)}")
        # Clients that hang up: half a body, or a whole request they do not wait for.
        valid = encode({"image": image, "task": "caption"})
        for i in range(20):
            hang_up(url, valid, AUTH, half=i % 2 == 0)
            rows["hang-ups"]["tried"] += 1
        time.sleep(1.0)
        alive = process.poll() is None and client.get("/health").status_code == 200
        after = client.post("/v1/predict", content=valid, headers={**AUTH, **JSON}).status_code
        rows["hang-ups"]["as expected"] += 20 if alive and after == 200 else 0
        health = client.get("/health").json()
    expected["hang-ups"] = {200}  # the server answers the next request
    return {
        "rows": rows,
        "expected": expected,
        "unexpected": unexpected,
        "alive": alive,
        "health": health,
    }


# --------------------------------------------------------------------------------------------------------------------
# CLI


def cli_cases(model: Path, work: Path) -> list[tuple[str, str, list[str]]]:
    image = work / "in.png"
    Image.new("RGB", (60, 40), (200, 200, 200)).save(image)
    (work / "text.png").write_text("not a picture")
    (work / "empty.png").write_bytes(b"")
    (work / "folder").mkdir()
    cases = []

    def add(group, name, argv):
        cases.append((group, name, [str(a) for a in argv]))

    def damaged(name, damage):
        folder = work / f"model-{len(cases)}"
        shutil.copytree(model, folder)
        damage(folder)
        add("checkpoints", name, ["predict", "--model", folder, "--image", image, "--task", "caption"])

    def cut(path, keep=0.5):
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])

    def set_config(folder, section, key, value):
        config = json.loads((folder / "config.json").read_text())
        config[section][key] = value
        (folder / "config.json").write_text(json.dumps(config))

    damaged("truncated weights", lambda f: cut(f / "model.safetensors"))
    damaged("zeroed weights file", lambda f: (f / "model.safetensors").write_bytes(bytes(100)))
    damaged("empty weights file", lambda f: (f / "model.safetensors").write_bytes(b""))
    damaged("truncated config.json", lambda f: cut(f / "config.json"))
    damaged("config.json is a list", lambda f: (f / "config.json").write_text("[]"))
    damaged("config.json is binary", lambda f: (f / "config.json").write_bytes(b"\xff\xfe\x00"))
    damaged("string where a number goes", lambda f: set_config(f, "llm", "hidden_size", "256"))
    damaged("list where a mapping goes", lambda f: (f / "config.json").write_text('{"llm": [1]}'))
    damaged("unknown config key", lambda f: set_config(f, "llm", "hiden_size", 1))
    damaged("impossible sizes", lambda f: set_config(f, "llm", "num_heads", 7))
    damaged("sizes that do not match the weights", lambda f: set_config(f, "llm", "intermediate_size", 100))
    damaged("truncated tokenizer", lambda f: cut(f / "tokenizer" / "tokenizer.json"))
    damaged("tokenizer missing", lambda f: shutil.rmtree(f / "tokenizer"))
    damaged("weights missing", lambda f: (f / "model.safetensors").unlink())
    add("checkpoints", "no such folder", ["predict", "--model", work / "nope", "--image", image])

    def coco(name, content):
        path = work / f"coco-{len(cases)}.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        add("COCO files", name, ["eval", "--model", model, "--coco-json", path, "--images", work])

    good_image = {"id": 1, "file_name": "in.png", "width": 60, "height": 40}
    category = {"id": 1, "name": "circle"}
    coco("a list", [1, 2])
    coco("not JSON", "{images: }")
    coco("no categories", {"images": [good_image], "annotations": []})
    coco("empty categories", {"images": [good_image], "annotations": [], "categories": []})
    coco("no images", {"annotations": [], "categories": [category]})
    coco("image without id", {"images": [{"file_name": "in.png"}], "annotations": [], "categories": [category]})
    coco(
        "bbox with a string",
        {
            "images": [good_image],
            "categories": [category],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, "x", 4]}],
        },
    )
    coco(
        "bbox of 3 numbers",
        {
            "images": [good_image],
            "categories": [category],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}],
        },
    )
    coco(
        "negative bbox size",
        {
            "images": [good_image],
            "categories": [category],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, -3, 4]}],
        },
    )
    coco(
        "unknown category",
        {
            "images": [good_image],
            "categories": [category],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 2, 3, 4]}],
        },
    )
    coco(
        "missing image file",
        {"images": [{**good_image, "file_name": "gone.png"}], "annotations": [], "categories": [category]},
    )
    add("COCO files", "no such file", ["eval", "--model", model, "--coco-json", work / "none.json", "--images", work])
    add("COCO files", "--coco-json without --images", ["eval", "--model", model, "--coco-json", work / "none.json"])

    def preset(name, text):
        path = work / f"preset-{len(cases)}.yaml"
        path.write_text(text)
        add("presets", name, ["train", "--config", path])

    preset("bad YAML", "model:\n  llm: {hidden_size: 64\n")
    preset("tabs in YAML", "train:\n\tmax_steps: 3\n")
    preset("a list at the top", "- 1\n- 2\n")
    preset("unknown top-level key", "trian: {}\n")
    preset("unknown train key", "train: {max_step: 3}\n")
    preset("string where a number goes", "train: {optim: {lr: fast}}\n")
    preset("1e-4 read as a string by YAML", "train: {optim: {lr: 1e-4}}\n")
    preset("zero steps", "train: {max_steps: 0}\n")
    preset("unknown freeze group", "train: {freeze: [eyes]}\n")
    preset("bad non-finite policy", "train: {on_nonfinite_loss: ignore}\n")
    preset("missing base", "base: nowhere.yaml\n")
    add("presets", "no such preset", ["train", "--config", work / "none.yaml"])

    for name, argv in [
        ("--limit -1", ["eval", "--model", model, "--shapesworld", work, "--limit", "-1"]),
        ("--limit 0", ["eval", "--model", model, "--shapesworld", work, "--limit", "0"]),
        ("--limit ten", ["eval", "--model", model, "--shapesworld", work, "--limit", "ten"]),
        ("--port 99999", ["serve", "--model", model, "--port", "99999"]),
        ("--port -1", ["serve", "--model", model, "--port", "-1"]),
        ("--max-batch-size 0", ["serve", "--model", model, "--max-batch-size", "0"]),
        ("--max-wait-ms nan", ["serve", "--model", model, "--max-wait-ms", "nan"]),
        ("--max-prompt-tokens over the model's", ["serve", "--model", model, "--max-prompt-tokens", "999999"]),
        ("--image-dir not a folder", ["serve", "--model", model, "--image-dir", image]),
        ("--min-score nan", ["predict", "--model", model, "--image", image, "--min-score", "nan"]),
        ("--min-score inf", ["predict", "--model", model, "--image", image, "--min-score", "inf"]),
        ("--min-score 2", ["predict", "--model", model, "--image", image, "--min-score", "2"]),
        (
            "--points 2",
            ["predict", "--model", model, "--image", image, "--task", "instance_segmentation", "--points", "2"],
        ),
        (
            "--points 500",
            [
                "predict",
                "--model",
                model,
                "--image",
                image,
                "--task",
                "instance_segmentation",
                "--classes",
                "a",
                "--points",
                "500",
            ],
        ),
        ("--max-steps 0", ["train", "--config", "configs/tiny.yaml", "--max-steps", "0"]),
        ("--max-steps -1", ["train", "--config", "configs/tiny.yaml", "--max-steps", "-1"]),
        ("unknown task", ["predict", "--model", model, "--image", image, "--task", "teleport"]),
        ("--size 10", ["data", "shapes", "--out", work / "d", "--size", "10"]),
        ("--person-probability 2", ["data", "shapes", "--out", work / "d", "--person-probability", "2"]),
    ]:
        add("arguments", name, argv)

    for name, argv in [
        ("--save-vis is a folder", ["predict", "--model", model, "--image", image, "--save-vis", work / "folder"]),
        ("--save-vis unknown format", ["predict", "--model", model, "--image", image, "--save-vis", work / "a.xyz"]),
        ("--out is a folder", ["eval", "--model", model, "--shapesworld", work, "--out", work / "folder"]),
        ("--image is a folder", ["predict", "--model", model, "--image", work / "folder"]),
        ("--image missing", ["predict", "--model", model, "--image", work / "none.png"]),
        ("--image is text", ["predict", "--model", model, "--image", work / "text.png", "--task", "caption"]),
        ("--image is empty", ["predict", "--model", model, "--image", work / "empty.png", "--task", "caption"]),
    ]:
        add("paths", name, argv)

    for name, argv in [
        (
            "70 classes",
            ["predict", "--model", model, "--image", image, "--classes", ",".join(f"c{i}" for i in range(70))],
        ),
        (
            "class token <c69>",
            ["predict", "--model", model, "--image", image, "--instruction", 'Find {"a": <c69>} in <image>.'],
        ),
        (
            "question of 100,000 characters",
            ["predict", "--model", model, "--image", image, "--task", "vqa", "--question", "x" * 100_000],
        ),
        ("grounding without an expression", ["predict", "--model", model, "--image", image, "--task", "grounding"]),
        ("two <image> markers", ["predict", "--model", model, "--image", image, "--instruction", "<image> <image>"]),
        ("detection without classes", ["predict", "--model", model, "--image", image, "--task", "detection"]),
    ]:
        add("instructions", name, argv)
    return cases


def run_cli(model: Path) -> dict:
    rows: dict[str, Counter] = defaultdict(Counter)
    unexpected = []
    with tempfile.TemporaryDirectory() as tmp:
        for group, name, argv in cli_cases(model, Path(tmp)):
            err = io.StringIO()
            crashed = False
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = cli_main(argv)
            except BaseException as error:  # a crash is what is being counted
                crashed, code = True, f"{type(error).__name__}: {error}"
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            message = lines[-1] if lines else ""
            one_line = len(lines) == 1 and "Traceback" not in err.getvalue()
            row = rows[group]
            row["tried"] += 1
            row["crashes"] += crashed
            row["exit 2, one line"] += code == 2 and one_line
            if code != 2 or not one_line:
                unexpected.append(f"{group} / {name}: exit {code}, stderr {err.getvalue().strip()[:300]!r}")
            elif len(message) < 20:
                unexpected.append(f"{group} / {name}: message too short: {message!r}")
    return {"rows": rows, "unexpected": unexpected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("checkpoints/visionllm-v1-tiny"))
    parser.add_argument("--no-report", action="store_true", help="print only; leave docs/RELIABILITY.md as it is")
    args = parser.parse_args()

    record = make_image(3, "val", 0, ShapesWorldConfig(image_size=128))
    image = data_url(png(record.rendered.image))
    started = time.perf_counter()
    server = run_server(args.model, image)
    cli = run_cli(args.model)
    elapsed = time.perf_counter() - started

    server_total = Counter()
    for row in server["rows"].values():
        server_total.update(row)
    cli_total = Counter()
    for row in cli["rows"].values():
        cli_total.update(row)
    lines = [
        "## Bad input",
        "",
        f"Command: `python bench/bad_inputs.py --model {args.model}` ({elapsed:.0f} s; {machine()}).",
        "",
        f"Server (`visionllm serve` with an API key and a {BODY_LIMIT:,}-byte body limit; one kept-alive client "
        "connection for all requests, then 20 clients that hang up):",
        "",
        "| kind of input | expected status | tried | as expected | 4xx | clean 4xx (JSON error) | 5xx |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, row in server["rows"].items():
        statuses = ", ".join(str(code) for code in sorted(server["expected"][group]))
        lines.append(
            f"| {group} | {statuses} | {row['tried']} | {row['as expected']} | {row['4xx']} | {row['clean 4xx']} "
            f"| {row['5xx']} |"
        )
    t = server_total
    lines += [
        f"| **all** | | **{t['tried']}** | **{t['as expected']}** | **{t['4xx']}** | **{t['clean 4xx']}** "
        f"| **{t['5xx']}** |",
        "",
        f"Server alive and answering after all of it: {'yes' if server['alive'] else 'NO'}; "
        f"requests cancelled because their client left: {server['health'].get('cancelled', 'n/a')}.",
        "",
        "CLI (`visionllm ...`, each expected to exit 2 with one line on stderr):",
        "",
        "| kind of input | tried | exit 2, one line | crashes |",
        "|---|---|---|---|",
    ]
    for group, row in cli["rows"].items():
        lines.append(f"| {group} | {row['tried']} | {row['exit 2, one line']} | {row['crashes']} |")
    c = cli_total
    lines += [f"| **all** | **{c['tried']}** | **{c['exit 2, one line']}** | **{c['crashes']}** |", ""]
    problems = server["unexpected"] + cli["unexpected"]
    lines.append(f"Inputs tried: {t['tried'] + c['tried']}. Answers other than the expected one: {len(problems)}.")
    for problem in problems:
        lines.append(f"- {problem}")
    text = "\n".join(lines)
    print(text)
    if not args.no_report:
        update_section("bad_inputs", text)


if __name__ == "__main__":
    main()
