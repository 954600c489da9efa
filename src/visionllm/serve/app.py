"""The HTTP app: OpenAI-compatible chat completions, structured predictions, the web page.

Routes:
    GET  /                      the web page
    GET  /health                liveness, model id, batching counters
    GET  /v1/models             the served model (OpenAI list format)
    GET  /v1/tasks              the tasks the model answers, the fields each needs and whether it reads an image
    GET  /v1/samples            sample images for the page; /samples/{i}.png serves them
    POST /v1/predict            one image + one task -> typed result (+ the picture with it drawn); a v2 model's
                                generation takes a description and no image, and answers an image
    POST /v1/chat/completions   OpenAI chat; `stream: true` streams text answers as server-sent events; a reply that
                                made images has them as `image_url` content parts

Every refusal is a 4xx with an OpenAI-style body `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visionllm.formats.codec import CodecError
from visionllm.formats.prompts import RegionPrompt
from visionllm.formats.results import Decoded, GeneratedImage
from visionllm.formats.task_table import TASK_TABLE, Instruction
from visionllm.formats.tasks import Task
from visionllm.models.common.inputs import ProcessorError
from visionllm.serve.batcher import DynamicBatcher, Job
from visionllm.serve.errors import RequestError
from visionllm.serve.images import ImageLimits, load_image, to_data_url
from visionllm.serve.protocol import (
    REGION,
    ChatRequest,
    PredictRequest,
    TaskParams,
    answer_body,
    answer_text,
    build_request_instruction,
    check_image,
    history_from_chat,
    message_content,
    params_from_chat,
    region_prompts,
)
from visionllm.vis import draw_result

logger = logging.getLogger(__name__)

WEB_DIR = resources.files("visionllm.serve") / "web"
ONE_OBJECT = (Task.GROUNDING, Task.INTERACTIVE_SEGMENTATION)
PAGE_PROMPTS = ("point", "box", "scribble")
"""The visual prompts the page draws for a task that takes regions (the API also takes polygons and masks)."""


@dataclass(frozen=True)
class ServerSettings:
    """How the server behaves.

    Attributes:
        model_id: the name clients use in `model` (OpenAI) and see in /v1/models.
        max_batch_size: most requests per model call.
        max_wait_ms: how long a request waits for others to share its batch.
        max_queue: requests allowed to wait; more get 503.
        max_queued_tokens: the LLM tokens (prompt, image tokens and longest answer) that the waiting and running
            requests may add up to; a request that would go over gets 503. A long request weighs more than a
            short one, so the wait behind the queue stays bounded.
        max_prompt_tokens: longest instruction accepted, in LLM tokens (None: the model's own
            `decoder.max_prompt_tokens`; a larger value is capped to it).
        max_body_bytes: largest request body.
        limits: image size limits and the folders local paths may come from.
        api_key: when set, /v1/* needs `Authorization: Bearer <api_key>`.
        samples: ShapesWorld sample images offered on the page.
        request_timeout_s: longest a request waits for its answer.
    """

    model_id: str
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_queued_tokens: int = 200_000
    max_prompt_tokens: int | None = None
    max_body_bytes: int = 16 * 2**20
    limits: ImageLimits = field(default_factory=ImageLimits)
    api_key: str | None = None
    samples: int = 6
    request_timeout_s: float = 300.0


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413, before the app parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        # Read the body up front (it is bounded), then hand it to the app.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        error = RequestError(413, f"the request body is over the limit of {self.max_bytes} bytes", code="too_large")
        payload = json.dumps(error.to_json()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


async def _send_error(send: Send, error: RequestError, headers: dict[bytes, bytes] | None = None) -> None:
    payload = json.dumps(error.to_json()).encode()
    fields = {b"content-type": b"application/json", b"content-length": str(len(payload)).encode(), **(headers or {})}
    await send({"type": "http.response.start", "status": error.status, "headers": list(fields.items())})
    await send({"type": "http.response.body", "body": payload})


class ApiKey:
    """Refuses `/v1/*` requests without `Authorization: Bearer <key>` with 401, before their body is read."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode() if key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is not None and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(header, self.expected):
                message = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
                await _send_error(send, RequestError(401, message, code="invalid_api_key"))
                return
        await self.app(scope, receive, send)


class CatchAll:
    """Answers an unexpected error with a JSON 500 and keeps the connection usable.

    Starlette's own last-resort handler re-raises after answering, and the server then drops the keep-alive
    connection under the client's next request. Here the error ends with the response: nothing is re-raised.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as error:
            logger.exception("internal error on %s", scope.get("path"))
            if started:  # part of the answer is out: the client sees it cut short, nothing more can be sent
                return
            await _send_error(send, RequestError(500, f"internal error: {type(error).__name__}: {error}"))


def create_app(model: Any, settings: ServerSettings) -> FastAPI:
    """Build the app around a loaded model of either version (anything with `predict`, `check_request`, `config`,
    `version` and `TASKS`)."""
    codec = model.config.codec()
    tasks = list(model.TASKS)
    version = model.version
    batcher = DynamicBatcher(
        model.predict,
        settings.max_batch_size,
        settings.max_wait_ms / 1000.0,
        settings.max_queue,
        settings.max_queued_tokens,
    )
    samples = _sample_images(settings.samples, model.config.image_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    app = FastAPI(title="VisionLLM", version="1", lifespan=lifespan)
    app.state.batcher = batcher
    # Outermost last: errors are caught around everything, the key is checked before the body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKey, key=settings.api_key)
    app.add_middleware(CatchAll)

    # -- errors -------------------------------------------------------------------------------------

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse(error.to_json(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_message(error).to_json(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        body = RequestError(error.status_code, message.get(error.status_code, str(error.detail))).to_json()
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    def check_model(name: str | None) -> None:
        if name is not None and name != settings.model_id:
            raise RequestError(
                404, f"unknown model {name!r}; this server serves {settings.model_id!r}", "model", "model_not_found"
            )

    async def prepare(
        params: TaskParams,
        image_ref: str | None,
        param: str,
        history: list[dict[str, str]] | None = None,
        chat: bool = False,
    ) -> tuple[Image.Image | None, Instruction | str, int, tuple[RegionPrompt, ...]]:
        """The request's image (None for a request without one), instruction and visual prompts, and its cost in
        tokens; everything the model would refuse is refused here, before the request joins a batch. Only
        generation goes without an image, and a v2 model's chat turn (`chat`)."""
        history = history or []
        earlier = sum(turn["content"].count(REGION) for turn in history)
        instruction = build_request_instruction(params, codec, tasks, version, earlier)
        shown = image_ref is not None
        check_image(instruction, shown, param, free_turn=chat and version >= 2)
        if params.regions and not shown:
            raise RequestError(400, "visual prompts (regions) mark an image: send the image with them", "regions")
        extra = {"history": history, "regions": len(params.regions), "image": shown} if version >= 2 else {}
        try:  # a v2 conversation that shows the image twice is refused here too
            cost = await run_in_threadpool(model.check_request, instruction, settings.max_prompt_tokens, **extra)
        except ProcessorError as error:
            raise RequestError(400, str(error), "instruction", "invalid_instruction") from None
        if image_ref is None:
            return None, instruction, cost, ()
        image = await run_in_threadpool(load_image, image_ref, settings.limits, param)
        regions = await run_in_threadpool(region_prompts, params.regions, image.size, settings.limits)
        return image, instruction, cost, regions

    def sampling(params: TaskParams) -> tuple[tuple[str, Any], ...]:
        """How a v2 model samples the request's images (a v1 model makes none and takes no such options)."""
        return tuple(params.sampling().items()) if version >= 2 else ()

    def floor(instruction: Instruction | str, min_score: float) -> float:
        """The score below which results are left out: none for a v2 task answered by its one best object
        (grounding, interactive segmentation), which always answers."""
        one = isinstance(instruction, Instruction) and instruction.task in ONE_OBJECT
        return 0.0 if version >= 2 and one else min_score

    async def answer(job: Job, request: Request) -> Decoded:
        """The job's answer; the job is cancelled if the client goes away first (a queued job never runs)."""
        future = asyncio.wrap_future(batcher.submit(job))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait(
                {future, gone}, timeout=settings.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if future in done:
                return future.result()
            future.cancel()
            if gone in done:
                raise RequestError(499, "the client closed the connection", code="client_closed")
            raise RequestError(503, f"no answer within {settings.request_timeout_s:.0f} s; retry later")
        except (CodecError, ProcessorError) as error:
            raise RequestError(400, str(error), "instruction") from None
        finally:
            gone.cancel()

    # -- routes -------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": settings.model_id,
            "batches": sum(batcher.batch_sizes.values()),
            "batch_sizes": dict(sorted(batcher.batch_sizes.items())),
            "pending": batcher.pending,
            "pending_tokens": batcher.pending_cost,
            "cancelled": batcher.skipped,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": settings.model_id, "object": "model", "created": 0, "owned_by": "visionllm"}
        return {"object": "list", "data": [entry]}

    @app.get("/v1/tasks")
    async def task_list() -> dict[str, Any]:
        data = []
        for task in tasks:
            spec = TASK_TABLE[task]
            entry = {"task": task.value, "fields": list(spec.fields), "output": spec.result, "image": spec.reads_image}
            if "regions" in spec.fields:
                entry["prompts"] = list(PAGE_PROMPTS)
            data.append(entry)
        return {"object": "list", "data": data}

    @app.get("/v1/samples")
    async def sample_list() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"name": f"sample {i}", "url": f"/samples/{i}.png"} for i in range(len(samples))],
        }

    @app.get("/samples/{index}.png", include_in_schema=False)
    async def sample(index: int) -> Response:
        if not 0 <= index < len(samples):
            raise RequestError(404, f"no sample {index}; there are {len(samples)}")
        return Response(samples[index], media_type="image/png")

    @app.post("/v1/predict")
    async def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
        check_model(body.model)
        image, instruction, cost, regions = await prepare(body, body.image, "image")
        job = Job(
            image, instruction, floor(instruction, body.min_score), cost=cost, regions=regions, sampling=sampling(body)
        )
        decoded = await answer(job, request)
        response = {
            "id": f"pred-{uuid.uuid4().hex[:16]}",
            "model": settings.model_id,
            **answer_body(instruction, image.size if image is not None else None, decoded),
        }
        if body.render and image is not None and not isinstance(decoded.prediction, GeneratedImage):
            picture = await run_in_threadpool(draw_result, image, decoded.prediction)
            response["visualization"] = to_data_url(picture)
        return response

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> dict[str, Any] | StreamingResponse:
        check_model(body.model)
        image_ref, params = params_from_chat(body, version)
        history = history_from_chat(body) if version >= 2 else []
        image, instruction, cost, regions = await prepare(params, image_ref, "messages", history, chat=True)
        size = image.size if image is not None else None
        turns = tuple(history)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        options = {"cost": cost, "regions": regions, "history": turns, "sampling": sampling(params)}

        if not body.stream:
            job = Job(image, instruction, floor(instruction, params.min_score), **options)
            decoded = await answer(job, request)
            found = answer_body(instruction, size, decoded)
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": settings.model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": message_content(answer_text(decoded), found)},
                        "finish_reason": "stop",
                    }
                ],
                "visionllm": found,
            }

        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str] = asyncio.Queue()
        job = Job(
            image,
            instruction,
            floor(instruction, params.min_score),
            on_text=lambda d: loop.call_soon_threadsafe(deltas.put_nowait, d),
            **options,
        )
        future = asyncio.wrap_future(batcher.submit(job))

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": settings.model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                async for event in stream():
                    yield event
            finally:  # the client went away (the response is cancelled) or the stream ended: a queued job never runs
                future.cancel()

        async def stream() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            streamed = False
            while not future.done():
                getter = asyncio.ensure_future(deltas.get())
                done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    streamed = True
                    yield chunk({"content": getter.result()})
                else:
                    getter.cancel()
            while not deltas.empty():
                streamed = True
                yield chunk({"content": deltas.get_nowait()})
            try:
                decoded = future.result()
            except Exception as error:  # headers are sent: report in the stream, as OpenAI does
                logger.warning("streamed request failed: %s", error)
                yield f"data: {json.dumps(RequestError(500, str(error)).to_json())}\n\n"
                yield "data: [DONE]\n\n"
                return
            if not streamed:
                yield chunk({"content": answer_text(decoded)})
            # The images made (a data URL each) come once, in the last chunk's `visionllm`, not as content deltas.
            yield chunk({}, "stop", visionllm=answer_body(instruction, size, decoded))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed the connection (the request's body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _validation_message(error: RequestValidationError) -> RequestError:
    problems, param = [], None
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ()) if part != "body"]
        if item.get("type") == "json_invalid":
            return RequestError(400, f"the request body is not valid JSON: {item.get('msg', '')}", code="bad_json")
        where = ".".join(location) or "body"
        param = param or where
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return RequestError(400, "invalid request: " + "; ".join(problems[:5]), param, "invalid_request")


def _sample_images(count: int, size: int) -> list[bytes]:
    from visionllm.data.shapes.dataset import make_image
    from visionllm.data.shapes.scene import ShapesWorldConfig

    pictures = []
    for index in range(count):
        record = make_image(7, "val", index, ShapesWorldConfig(image_size=size, person_probability=0.3))
        buffer = io.BytesIO()
        Image.fromarray(record.rendered.image).save(buffer, format="PNG")
        pictures.append(buffer.getvalue())
    return pictures
