"""Dynamic batching: requests that arrive together are answered by one batched model call.

One worker thread owns the model. It takes the first waiting request, then keeps collecting for at most
`max_wait_s` or until `max_batch_size` requests are in hand, and runs them as one `predict` call (tasks may be
mixed: the model's batched predict handles any mix). While a batch runs, new requests queue up and form the next
batch at once, so under load batches fill without waiting.

A batch that fails is retried one request at a time, so one bad request cannot fail the others. Requests that
sample images differently (a v2 model's seed, steps, guidance) are answered by separate calls of one batch: the
model's predict takes one set of sampling options for all its pairs.

Admission is bounded twice: by the number of requests waiting or running, and by their cost in LLM tokens (a
request's prompt, image tokens and longest answer), so a few long requests cannot hold the worker for everyone.
A request whose future is cancelled (its client went away) is skipped without running, and stops counting at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from visionllm.formats.results import Decoded, Detections
from visionllm.formats.task_table import Instruction
from visionllm.serve.errors import RequestError

logger = logging.getLogger(__name__)

# predict(images, instructions, min_score, on_text) -> one Decoded per pair (VisionLLM.predict's signature).
PredictFn = Callable[..., list[Decoded]]


@dataclass
class Job:
    """One request waiting for the model.

    Attributes:
        image: the decoded image, or None for a request without one (a v2 model's text-to-image).
        instruction: the instruction (an `Instruction` from the task table, or free text).
        min_score: structured results below this score are left out.
        on_text: receives the text answer's new characters as they are generated (streaming), or None.
        future: resolves to the `Decoded` answer; cancelling it before it runs skips the job.
        cost: what the job weighs against the queue's token budget (`VisionLLM.check_request`).
        streamed: whether part of its answer went out already.
        regions: its visual prompts (v2 models).
        history: the conversation's earlier turns, {"role", "content"} each (v2 models).
        sampling: how the images it makes are sampled, as (name, value) pairs of predict's keywords (v2 models:
            seed, steps, guidance, image_guidance); empty for a model that makes none.
    """

    image: Image.Image | None
    instruction: Instruction | str
    min_score: float = 0.3
    on_text: Callable[[str], None] | None = None
    future: Future = field(default_factory=Future)
    cost: int = 1
    streamed: bool = False
    regions: tuple = ()
    history: tuple = ()
    sampling: tuple[tuple[str, Any], ...] = ()


class DynamicBatcher:
    """Groups concurrent requests into model batches on one worker thread.

    Args:
        predict: the model's batched predict (`VisionLLM.predict`).
        max_batch_size: most requests per model call.
        max_wait_s: how long the first request of a batch waits for company.
        max_queue: requests allowed to wait or run; beyond it `submit` refuses with 503.
        max_queued_cost: the costs of the requests waiting or running may add up to this; a request that would
            go over is refused with 503 (unless nothing is pending: one request always gets in).
    """

    def __init__(
        self,
        predict: PredictFn,
        max_batch_size: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 256,
        max_queued_cost: int | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_queue < 1 or (max_queued_cost is not None and max_queued_cost < 1):
            raise ValueError(f"max_queue and max_queued_cost must be >= 1, got {max_queue}, {max_queued_cost}")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_queued_cost = max_queued_cost
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self.pending = 0
        self.pending_cost = 0
        self._thread: threading.Thread | None = None
        self.batch_sizes: Counter[int] = Counter()
        self.skipped = 0

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="visionllm-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the requests already queued, then end the worker."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self._thread = None

    def submit(self, job: Job) -> Future:
        """Queue a job; its future resolves to the answer (or raises what predicting it raised)."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the batcher is not running: call start() first")
        with self._lock:
            if self.pending >= self.max_queue:
                raise RequestError(503, "the server is busy: too many requests are waiting; retry shortly")
            budget = self.max_queued_cost
            if budget is not None and self.pending and self.pending_cost + job.cost > budget:
                raise RequestError(
                    503, "the server is busy: the waiting requests are too long to add this one; retry shortly"
                )
            self.pending += 1
            self.pending_cost += job.cost
        job.future.add_done_callback(lambda _: self._release(job))
        self._queue.put(job)
        return job.future

    def _release(self, job: Job) -> None:
        with self._lock:
            self.pending -= 1
            self.pending_cost -= job.cost

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            if first.future.cancelled():
                self.skipped += 1
                continue
            batch, stopping = [first], False
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    remaining = deadline - time.monotonic()
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                if job.future.cancelled():
                    self.skipped += 1
                    continue
                batch.append(job)
            self._answer(batch)
            if stopping:
                return

    def _answer(self, batch: Sequence[Job]) -> None:
        running = [job for job in batch if job.future.set_running_or_notify_cancel()]
        self.skipped += len(batch) - len(running)
        alike: dict[tuple[tuple[str, Any], ...], list[Job]] = {}
        for job in running:
            alike.setdefault(job.sampling, []).append(job)
        for group in alike.values():
            self._answer_alike(group)

    def _answer_alike(self, batch: Sequence[Job]) -> None:
        """One model call for jobs that sample alike; retried one job at a time if it fails."""
        self.batch_sizes[len(batch)] += 1
        try:
            results = self._predict(batch)
        except Exception as error:
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            logger.warning("a batch of %d failed (%s); answering its requests one at a time", len(batch), error)
            for job in batch:
                if job.streamed:  # part of its answer is already out: a second run would repeat it
                    job.future.set_exception(error)
                    continue
                try:
                    job.future.set_result(self._predict([job])[0])
                except Exception as single_error:
                    job.future.set_exception(single_error)
            return
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)

    def _predict(self, batch: Sequence[Job]) -> list[Decoded]:
        def on_text(index: int, delta: str) -> None:
            job = batch[index]
            if job.on_text is not None:
                job.streamed = True
                job.on_text(delta)

        streaming = any(job.on_text is not None for job in batch)
        conversations = {}  # only for a model that reads them (v2): v1's predict takes neither
        if any(job.regions or job.history for job in batch):
            conversations = {"regions": [job.regions for job in batch], "history": [job.history for job in batch]}
        results = self.predict(
            [job.image for job in batch],
            [job.instruction for job in batch],
            min_score=min(job.min_score for job in batch),
            on_text=on_text if streaming else None,
            **conversations,
            **dict(batch[0].sampling),  # the same for every job of the call (`_answer`)
        )
        return [_above(result, job.min_score) for result, job in zip(results, batch, strict=True)]


def _above(result: Decoded, min_score: float) -> Decoded:
    """The result with detections below this request's own `min_score` left out (the batch used the lowest)."""
    prediction = result.prediction
    if isinstance(prediction, Detections) and len(prediction) and (prediction.scores < min_score).any():
        return Decoded(prediction.select(np.flatnonzero(prediction.scores >= min_score)), result.dropped)
    return result
