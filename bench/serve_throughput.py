"""Benchmark: server throughput under concurrency, with and without dynamic batching.

    python bench/serve_throughput.py --model checkpoints/visionllm-v1-tiny --out docs/benchmarks/serve_throughput.md

Runs the real app under uvicorn on 127.0.0.1 and sends a fixed mix of requests (detection, segmentation,
grounding, caption, VQA on ShapesWorld images) through HTTP from client threads. Three settings:
one client at a time; C concurrent clients with batching off (max batch 1); C clients with batching on.
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
import uvicorn
from PIL import Image

from visionllm.data.shapes.dataset import make_image
from visionllm.data.shapes.scene import ShapesWorldConfig
from visionllm.models.v1.model import VisionLLM
from visionllm.serve.app import ServerSettings, create_app
from visionllm.serve.images import to_data_url

CLASSES = ["circle", "square", "triangle", "star", "hexagon", "person"]


def requests_mix(size: int, count: int) -> list[dict]:
    bodies = []
    for i in range(count):
        record = make_image(5, "val", i, ShapesWorldConfig(image_size=size))
        image = to_data_url(Image.fromarray(record.rendered.image))
        kind = i % 5
        if kind == 0:
            body = {"task": "detection", "classes": CLASSES}
        elif kind == 1:
            body = {"task": "instance_segmentation", "classes": CLASSES, "points": 16}
        elif kind == 2 and record.refs:
            body = {"task": "grounding", "expression": record.refs[0][1][0]}
        elif kind == 3 or not record.questions:
            body = {"task": "caption"}
        else:
            body = {"task": "vqa", "question": record.questions[0].question}
        bodies.append({"image": image, **body})
    return bodies


def serve(model: VisionLLM, max_batch_size: int, max_wait_ms: float):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ServerSettings(model_id="bench", max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, samples=0)
    server = uvicorn.Server(uvicorn.Config(create_app(model, settings), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def run(model: VisionLLM, bodies: list[dict], concurrency: int, max_batch_size: int, max_wait_ms: float) -> dict:
    server, thread, url = serve(model, max_batch_size, max_wait_ms)
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            client.post("/v1/predict", json=bodies[0]).raise_for_status()  # warm-up

            def one(body: dict) -> float:
                start = time.perf_counter()
                client.post("/v1/predict", json=body).raise_for_status()
                return time.perf_counter() - start

            start = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                latencies = list(pool.map(one, bodies))
            elapsed = time.perf_counter() - start
            sizes = client.get("/health").json()["batch_sizes"]
    finally:
        server.should_exit = True
        thread.join(30)
    latencies.sort()
    total = sum(int(k) * v for k, v in sizes.items())
    return {
        "requests_per_s": len(bodies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "mean_batch": total / max(1, sum(sizes.values())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("checkpoints/visionllm-v1-tiny"))
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    model = VisionLLM.from_pretrained(args.model)
    bodies = requests_mix(model.config.image_size, args.requests)
    settings = [
        ("one client at a time", 1, 1),
        (f"{args.concurrency} clients, batching off (max batch 1)", args.concurrency, 1),
        (f"{args.concurrency} clients, batching on (max batch {args.concurrency})", args.concurrency, args.concurrency),
    ]
    rows = []
    for name, concurrency, max_batch in settings:
        result = run(model, bodies, concurrency, max_batch, args.max_wait_ms)
        rows.append((name, result))
        print(f"{name}: {result['requests_per_s']:.2f} req/s, p50 {result['p50_ms']:.0f} ms, "
              f"p95 {result['p95_ms']:.0f} ms, mean batch {result['mean_batch']:.2f}", flush=True)  # fmt: skip
    base = rows[0][1]["requests_per_s"]
    lines = [
        "# Server throughput: dynamic batching",
        "",
        f"Command: `python bench/serve_throughput.py --model {args.model} --requests {args.requests} "
        f"--concurrency {args.concurrency}`",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{platform.python_version()}. Model: `{args.model}` ({model.config.image_size} px). "
        f"{args.requests} `POST /v1/predict` requests over HTTP on 127.0.0.1, a fixed mix of detection, "
        "instance segmentation (16 points), grounding, caption and VQA on ShapesWorld images; "
        f"max wait {args.max_wait_ms:g} ms.",
        "",
        "| setting | requests/s | vs one at a time | p50 latency (ms) | p95 latency (ms) | mean batch |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['requests_per_s']:.2f} | {r['requests_per_s'] / base:.2f}x | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} | {r['mean_batch']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
