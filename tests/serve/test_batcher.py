import threading
import time

import numpy as np
import pytest
from PIL import Image

from visionllm.formats.results import Decoded, Detections, TextAnswer
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.serve.batcher import DynamicBatcher, Job
from visionllm.serve.errors import RequestError

BLANK = Image.new("RGB", (8, 8))


class Recorder:
    """A stand-in model: answers each instruction with its own text, slowly, and records the batches."""

    def __init__(self, delay=0.05, fail_on=None):
        self.batches = []
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, images, instructions, min_score, on_text=None):
        self.batches.append(list(instructions))
        time.sleep(self.delay)
        if self.fail_on in instructions:
            raise ValueError(f"cannot answer {self.fail_on}")
        for i, text in enumerate(instructions):
            if on_text is not None:
                for word in text.split():
                    on_text(i, word + " ")
        return [Decoded(TextAnswer(text)) for text in instructions]


def submit_together(batcher, texts, **job_args):
    futures = [None] * len(texts)
    barrier = threading.Barrier(len(texts))

    def send(i):
        barrier.wait()
        futures[i] = batcher.submit(Job(BLANK, texts[i], **job_args))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [f.result(timeout=10) for f in futures]


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer():
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=0.2)
    batcher.start()
    try:
        texts = [f"request {i}" for i in range(10)]
        results = submit_together(batcher, texts)
    finally:
        batcher.stop()
    assert [r.prediction.text for r in results] == texts
    assert max(len(b) for b in model.batches) == 4
    assert len(model.batches) <= 4  # 10 requests in batches of <= 4: three or four calls, not ten
    assert sorted(t for b in model.batches for t in b) == sorted(texts)
    assert sum(batcher.batch_sizes.values()) == len(model.batches)


def test_batch_size_one_answers_one_at_a_time():
    model = Recorder(delay=0.0)
    batcher = DynamicBatcher(model, max_batch_size=1, max_wait_s=0.05)
    batcher.start()
    try:
        submit_together(batcher, ["a", "b", "c"])
    finally:
        batcher.stop()
    assert [len(b) for b in model.batches] == [1, 1, 1]


def test_a_failing_request_does_not_fail_its_batch_mates():
    model = Recorder(fail_on="bad")
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.2)
    batcher.start()
    try:
        futures = [batcher.submit(Job(BLANK, text)) for text in ("good 1", "bad", "good 2")]
        assert futures[0].result(10).prediction.text == "good 1"
        assert futures[2].result(10).prediction.text == "good 2"
        with pytest.raises(ValueError, match="cannot answer bad"):
            futures[1].result(10)
    finally:
        batcher.stop()


def test_streamed_text_arrives_in_order_for_each_request():
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.2)
    batcher.start()
    received = {0: [], 1: []}
    try:
        futures = [
            batcher.submit(Job(BLANK, "one two three", on_text=received[0].append)),
            batcher.submit(Job(BLANK, "four five", on_text=received[1].append)),
        ]
        [f.result(10) for f in futures]
    finally:
        batcher.stop()
    assert "".join(received[0]) == "one two three " and "".join(received[1]) == "four five "


def test_a_full_queue_refuses_with_503_and_stop_finishes_queued_work():
    model = Recorder(delay=0.3)
    batcher = DynamicBatcher(model, max_batch_size=1, max_wait_s=0.0, max_queue=2)  # the running one counts
    with pytest.raises(RuntimeError, match="not running"):
        batcher.submit(Job(BLANK, "early"))
    batcher.start()
    first = batcher.submit(Job(BLANK, "first"))
    time.sleep(0.1)  # the worker is busy with "first"
    second = batcher.submit(Job(BLANK, "second"))
    with pytest.raises(RequestError) as caught:
        batcher.submit(Job(BLANK, "third"))
    assert caught.value.status == 503
    batcher.stop()
    assert first.result(1).prediction.text == "first" and second.result(1).prediction.text == "second"


def test_the_queue_is_bounded_by_the_tokens_it_holds_not_only_by_its_length():
    model = Recorder(delay=0.3)
    batcher = DynamicBatcher(model, max_batch_size=1, max_wait_s=0.0, max_queue=100, max_queued_cost=10)
    batcher.start()
    try:
        long_one = batcher.submit(Job(BLANK, "long", cost=8))
        time.sleep(0.1)  # running
        with pytest.raises(RequestError) as caught:
            batcher.submit(Job(BLANK, "another long", cost=5))
        assert caught.value.status == 503 and "too long" in caught.value.message
        short = batcher.submit(Job(BLANK, "short", cost=2))  # what still fits gets in
        assert batcher.pending == 2 and batcher.pending_cost == 10
        assert long_one.result(5).prediction.text == "long" and short.result(5).prediction.text == "short"
        assert batcher.pending == 0 and batcher.pending_cost == 0
        alone = batcher.submit(Job(BLANK, "over the whole budget", cost=50))  # nothing pending: it gets in
        assert alone.result(5).prediction.text == "over the whole budget"
    finally:
        batcher.stop()


def test_cancelled_waiting_jobs_never_run_and_free_their_place_at_once():
    model = Recorder(delay=0.3)
    batcher = DynamicBatcher(model, max_batch_size=1, max_wait_s=0.0, max_queue=3, max_queued_cost=100)
    batcher.start()
    try:
        running = batcher.submit(Job(BLANK, "running", cost=10))
        time.sleep(0.1)
        dropped = [batcher.submit(Job(BLANK, f"dropped {i}", cost=40)) for i in range(2)]
        assert batcher.pending == 3
        for future in dropped:
            assert future.cancel()  # the client went away while it waited
        assert batcher.pending == 1 and batcher.pending_cost == 10
        kept = batcher.submit(Job(BLANK, "kept", cost=40))
        assert running.result(5).prediction.text == "running" and kept.result(5).prediction.text == "kept"
    finally:
        batcher.stop()
    assert [b for batch in model.batches for b in batch] == ["running", "kept"]
    assert batcher.skipped == 2


def test_each_request_keeps_its_own_min_score():
    def predict(images, instructions, min_score, on_text=None):
        assert min_score == 0.2  # the batch runs at the lowest threshold
        dets = Detections(np.array([[0, 0, 1, 1], [0, 0, 2, 2]]), np.array([0.9, 0.4]), ("a", "b"))
        return [Decoded(dets) for _ in images]

    batcher = DynamicBatcher(predict, max_batch_size=2, max_wait_s=0.5)
    batcher.start()
    try:
        strict = batcher.submit(Job(BLANK, "x", min_score=0.5))
        loose = batcher.submit(Job(BLANK, "y", min_score=0.2))
        assert strict.result(10).prediction.class_names == ("a",)
        assert loose.result(10).prediction.class_names == ("a", "b")
    finally:
        batcher.stop()


def test_requests_that_sample_images_differently_share_a_batch_but_not_a_model_call():
    calls = []

    def predict(images, instructions, min_score, on_text=None, **sampling):
        calls.append((list(instructions), sampling))
        return [Decoded(TextAnswer(f"{text} {sampling.get('seed')}")) for text in instructions]

    batcher = DynamicBatcher(predict, max_batch_size=4, max_wait_s=0.5)
    batcher.start()
    try:
        seeds = [1, 2, 1, None]
        jobs = [Job(None, f"r{k}", sampling=(("seed", s),) if s else ()) for k, s in enumerate(seeds)]
        futures = [batcher.submit(job) for job in jobs]  # all waiting within one batch's wait
        answers = [future.result(10).prediction.text for future in futures]
    finally:
        batcher.stop()
    assert answers == ["r0 1", "r1 2", "r2 1", "r3 None"]  # each request got its own options
    assert calls == [(["r0", "r2"], {"seed": 1}), (["r1"], {"seed": 2}), (["r3"], {})]  # in order of arrival
    assert sum(batcher.batch_sizes.values()) == 3


@pytest.mark.slow
def test_batched_answers_equal_one_at_a_time_answers_of_a_real_model(micro_model):
    codec = micro_model.config.codec()
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(4)]
    instructions = [
        build_instruction(Task.DETECTION, classes=["circle", "square"], config=codec),
        build_instruction(Task.CAPTION),
        build_instruction(Task.GROUNDING, expression="the red circle", config=codec),
        build_instruction(Task.VQA, question="how many?"),
    ]
    alone = [micro_model.predict([im], [ins], min_score=0.0)[0] for im, ins in zip(images, instructions, strict=True)]
    batcher = DynamicBatcher(micro_model.predict, max_batch_size=4, max_wait_s=1.0)
    batcher.start()
    try:
        futures = [batcher.submit(Job(im, ins, min_score=0.0)) for im, ins in zip(images, instructions, strict=True)]
        batched = [f.result(60) for f in futures]
    finally:
        batcher.stop()
    assert dict(batcher.batch_sizes) == {4: 1}
    for one, many in zip(alone, batched, strict=True):
        if isinstance(one.prediction, TextAnswer):
            assert one.prediction.text == many.prediction.text
        else:
            assert one.prediction.class_names == many.prediction.class_names
            np.testing.assert_allclose(one.prediction.boxes_xyxy_px, many.prediction.boxes_xyxy_px, atol=1e-3)
