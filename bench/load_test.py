"""Benchmark: the server under concurrent load with bad requests and clients that hang up.

    python bench/load_test.py --model checkpoints/visionllm-v1-tiny --clients 16 --requests 320

A real `visionllm serve` process on 127.0.0.1; `--clients` threads send rounds of `--requests` requests (first
`--warmup-rounds` unmeasured, then `--rounds` measured): valid ones
(detection, segmentation, grounding, caption and VQA on ShapesWorld images, as in bench/serve_throughput.py), 15%
malformed (bad JSON, unknown tasks, lone surrogates, over-long prompts, too many classes, broken images) and 5%
that send a valid request and hang up without reading the answer. Reported: throughput and p50 / p99 latency of
the valid requests, the statuses of all, the 5xx count (must be 0), and the server's resident memory after the
warm-up and after each measured round (it must not grow with the requests served). Results go to
docs/RELIABILITY.md (section `load`).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from harness import hang_up, machine, rss_mb, running_server, update_section
from serve_throughput import requests_mix

MALFORMED = [
    ("bad JSON", b'{"image": "x", "task": '),
    ("unknown task", json.dumps({"image": "x", "task": "teleport"}).encode()),
    ("lone surrogate", json.dumps({"image": "x", "task": "vqa", "question": "what \ud800?"}).encode()),
    ("over-long prompt", json.dumps({"image": "x", "task": "vqa", "question": "why " * 5000}).encode()),
    (
        "too many classes",
        json.dumps({"image": "x", "task": "detection", "classes": [str(i) for i in range(100)]}).encode(),
    ),
    ("broken image", json.dumps({"image": "data:image/png;base64,iVBORw0KGgo=", "task": "caption"}).encode()),
    ("loose parameter", json.dumps({"image": "x", "task": "caption", "render": "yes"}).encode()),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("checkpoints/visionllm-v1-tiny"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=320, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds")
    parser.add_argument("--warmup-rounds", type=int, default=6, help="unmeasured rounds first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-report", action="store_true", help="print only; leave docs/RELIABILITY.md as it is")
    args = parser.parse_args()

    valid = [json.dumps(body).encode() for body in requests_mix(128, 50)]
    rng = random.Random(args.seed)
    plan = []
    for _ in range(args.requests):
        draw = rng.random()
        if draw < 0.15:
            name, body = rng.choice(MALFORMED)
            plan.append(("malformed", name, body))
        elif draw < 0.20:
            plan.append(("hang-up", "hang-up", rng.choice(valid)))
        else:
            plan.append(("valid", "valid", rng.choice(valid)))

    statuses: Counter = Counter()
    by_kind: dict[str, Counter] = {"valid": Counter(), "malformed": Counter(), "hang-up": Counter()}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run_round(url: str, record: bool) -> float:
        """Send the whole plan from `--clients` threads; the wall time. Counted only when `record`."""
        position = iter(range(len(plan)))

        def client() -> None:
            with httpx.Client(base_url=url, timeout=300) as http:
                while True:
                    with lock:
                        index = next(position, None)
                    if index is None:
                        return
                    kind, name, body = plan[index]
                    if kind == "hang-up":
                        hang_up(url, body)
                        with lock:
                            by_kind[kind]["sent"] += record
                        continue
                    start = time.perf_counter()
                    try:
                        status = http.post(
                            "/v1/predict", content=body, headers={"content-type": "application/json"}
                        ).status_code
                    except httpx.HTTPError as error:
                        status = f"{type(error).__name__}"
                    elapsed = time.perf_counter() - start
                    if not record:
                        continue
                    with lock:
                        statuses[status] += 1
                        by_kind[kind][status] += 1
                        if kind == "valid" and status == 200:
                            latencies.append(elapsed)
                        if (kind == "valid" and status != 200) or (
                            kind == "malformed" and not (isinstance(status, int) and 400 <= status < 500)
                        ):
                            errors.append(f"{name}: {status}")

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    rss: list[float] = []
    with running_server(args.model, ["--max-batch-size", "8"]) as (process, url):
        for _ in range(args.warmup_rounds):  # the same load, so that the allocator reaches its working size
            run_round(url, record=False)
        time.sleep(1.0)
        rss.append(rss_mb(process.pid))
        wall = 0.0
        for _ in range(args.rounds):
            wall += run_round(url, record=True)
            time.sleep(1.0)
            rss.append(rss_mb(process.pid))
        health = httpx.get(f"{url}/health").json()
        alive = process.poll() is None

    latencies.sort()
    five_xx = sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)
    valid_done = by_kind["valid"][200]
    refused = sum(n for s, n in by_kind["malformed"].items() if isinstance(s, int) and 400 <= s < 500)
    sizes = health["batch_sizes"]
    mean_batch = sum(int(k) * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
    lines = [
        "## Load",
        "",
        f"Command: `python bench/load_test.py --model {args.model} --clients {args.clients} "
        f"--requests {args.requests} --rounds {args.rounds} --warmup-rounds {args.warmup_rounds}` ({machine()}).",
        "",
        f"{args.clients} concurrent clients send a `visionllm serve` process (max batch 8) "
        f"{args.warmup_rounds} warm-up round(s) and "
        f"{args.rounds} measured rounds of {len(plan)} requests; in the measured rounds, "
        f"{sum(by_kind['valid'].values())} valid, {sum(by_kind['malformed'].values())} malformed, "
        f"{by_kind['hang-up']['sent']} sent by clients that hang up without reading the answer.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| wall time | {wall:.1f} s |",
        f"| valid requests answered (200) | {valid_done} of {sum(by_kind['valid'].values())} |",
        f"| throughput of valid requests | {valid_done / wall:.2f} requests/s |",
        f"| p50 / p99 latency of valid requests | {1000 * statistics.median(latencies):.0f} / "
        f"{1000 * latencies[int(0.99 * (len(latencies) - 1))]:.0f} ms |",
        f"| malformed requests refused with a 4xx | {refused} of {sum(by_kind['malformed'].values())} |",
        f"| 5xx answers | {five_xx} |",
        f"| statuses | {dict(sorted((str(k), v) for k, v in statuses.items()))} |",
        f"| requests cancelled because their client left (all rounds) | {health.get('cancelled', 'n/a')} |",
        f"| mean batch (all rounds) | {mean_batch:.2f} |",
        "| server RSS after the warm-up, then after each measured round | "
        + " / ".join(f"{value:.0f}" for value in rss)
        + f" MB ({rss[-1] - rss[0]:+.0f} MB) |",
        f"| server alive at the end | {'yes' if alive else 'NO'} |",
    ]
    if errors:
        lines += ["", "Unexpected answers: " + "; ".join(f"{k} x{v}" for k, v in Counter(errors).most_common())]
    text = "\n".join(lines)
    print(text)
    if not args.no_report:
        update_section("load", text)


if __name__ == "__main__":
    main()
