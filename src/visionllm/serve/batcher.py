"""Dynamic batching: requests that arrive together are answered by one batched model call.

One worker thread owns the model. It takes the first waiting request, then keeps collecting for at most
`max_wait_s` or until `max_batch_size` requests are in hand, and runs them as one `predict` call (tasks may be
mixed: the model's batched predict handles any mix). While a batch runs, new requests queue up and form the next
batch at once, so under load batches fill without waiting.

A batch that fails is retried one request at a time, so one bad request cannot fail the others.
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
        image: the decoded image.
        instruction: the instruction (an `Instruction` from the task table, or free text).
        min_score: structured results below this score are left out.
        on_text: receives the text answer's new characters as they are generated (streaming), or None.
        future: resolves to the `Decoded` answer.
    """

    image: Image.Image
    instruction: Instruction | str
    min_score: float = 0.3
    on_text: Callable[[str], None] | None = None
    future: Future = field(default_factory=Future)
    streamed: bool = False


class DynamicBatcher:
    """Groups concurrent requests into model batches on one worker thread.

    Args:
        predict: the model's batched predict (`VisionLLM.predict`).
        max_batch_size: most requests per model call.
        max_wait_s: how long the first request of a batch waits for company.
        max_queue: requests allowed to wait; beyond it `submit` refuses with 503.
    """

    def __init__(self, predict: PredictFn, max_batch_size: int = 8, max_wait_s: float = 0.01, max_queue: int = 256):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self.batch_sizes: Counter[int] = Counter()

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
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise RequestError(503, "the server is busy: too many requests are waiting; retry shortly") from None
        return job.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
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
                batch.append(job)
            self._answer(batch)
            if stopping:
                return

    def _answer(self, batch: Sequence[Job]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
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
        results = self.predict(
            [job.image for job in batch],
            [job.instruction for job in batch],
            min_score=min(job.min_score for job in batch),
            on_text=on_text if streaming else None,
        )
        return [_above(result, job.min_score) for result, job in zip(results, batch, strict=True)]


def _above(result: Decoded, min_score: float) -> Decoded:
    """The result with detections below this request's own `min_score` left out (the batch used the lowest)."""
    prediction = result.prediction
    if isinstance(prediction, Detections) and len(prediction) and (prediction.scores < min_score).any():
        return Decoded(prediction.select(np.flatnonzero(prediction.scores >= min_score)), result.dropped)
    return result
