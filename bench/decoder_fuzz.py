"""Benchmark: the answer decoder never raises, on random sequences over a real model's vocabulary.

    python bench/decoder_fuzz.py --model checkpoints/visionllm-v1-tiny --count 100000 \
        --out docs/benchmarks/decoder_fuzz.md

Each sequence is drawn from the model's whole LLM vocabulary (words, word pieces and codec tokens), weighted towards
the codec's tokens so that headers, classes and coordinates occur often; a third start with a well-formed header
of a random format, a third with `<fmt>` and random header tokens, a third with anything. Every sequence goes
through both decoding paths: `decode_text` on the detokenised text, and `decode_slots` on the ids cut into slots
of the format the instruction would have asked for. A sequence fails when either raises.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
import traceback
from pathlib import Path

import numpy as np

from harness import machine, update_section
from visionllm.formats import tokens as tk
from visionllm.formats.codec import OutputFormat, decode_slots, decode_text
from visionllm.models.v1.model import VisionLLM

HEADER_TOKENS = [tk.KPT, tk.CLS, tk.TEXT, "<x1>", "<y1>", "<x2>", "<y2>", "<x3>", "<y3>", "<c0>", tk.SEP]


def sequences(count: int, vocabulary_size: int, codec_ids: list[int], seed: int):
    """(kind, text tokens or None, ids) for `count` random sequences."""
    rng = random.Random(seed)
    formats = [OutputFormat.boxes(), OutputFormat.polygons(3), OutputFormat.polygons(8), OutputFormat.keypoints(17)]
    for i in range(count):
        length = rng.randrange(0, 80)
        ids = [rng.choice(codec_ids) if rng.random() < 0.6 else rng.randrange(vocabulary_size) for _ in range(length)]
        kind = ("header", "any header", "anything")[i % 3]
        head: list[str] = []
        if kind == "header":
            head = rng.choice([*formats, OutputFormat.text()]).header_tokens()
        elif kind == "any header":
            head = [tk.FMT_OPEN, *rng.choices(HEADER_TOKENS, k=rng.randrange(0, 6)), tk.FMT_CLOSE]
        yield kind, head, ids, rng.choice(formats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("checkpoints/visionllm-v1-tiny"))
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/decoder_fuzz.md"))
    parser.add_argument("--no-report", action="store_true", help="leave docs/RELIABILITY.md as it is")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")

    model = VisionLLM.from_pretrained(args.model)
    tokenizer, vocab = model.processor.tokenizer, model.processor.vocab
    config = model.config.codec()
    codec_ids = list(range(vocab.offset, vocab.offset + len(vocab)))
    class_names = ["red circle", "person", "star"]
    wh = (model.config.image_size, model.config.image_size)
    failures: list[dict] = []
    counts = {"header": 0, "any header": 0, "anything": 0}
    start = time.perf_counter()
    for kind, head, ids, fmt in sequences(args.count, len(tokenizer), codec_ids, args.seed):
        counts[kind] += 1
        text = " ".join([*head, tokenizer.decode(ids)])
        try:
            decode_text(text, class_names, wh, config)
            slots = [ids[i : i + fmt.slot_length] for i in range(0, len(ids), fmt.slot_length)]
            anchors = np.zeros((len(slots), 2))
            decode_slots(slots, fmt, class_names, wh, config, anchors_xy_px=anchors, vocabulary=vocab)
        except Exception:  # the benchmark records every failure, whatever it is
            failures.append({"text": text[:300], "error": traceback.format_exc(limit=2)[-600:]})
    seconds = time.perf_counter() - start

    lines = [
        "# The answer decoder on random sequences",
        "",
        f"Produced by `python bench/decoder_fuzz.py --model {args.model} --count {args.count}` "
        f"({platform.machine()}, seed {args.seed}, {seconds:.0f} s).",
        "",
        f"Vocabulary: the model's {len(tokenizer)} LLM tokens, codec tokens drawn 60% of the time.",
        "",
        "| sequences | starting with a valid header | with `<fmt>` and random header tokens | anything | raised |",
        "|---|---|---|---|---|",
        f"| {args.count} | {counts['header']} | {counts['any header']} | {counts['anything']} | {len(failures)} |",
        "",
    ]
    if failures:
        lines += ["First failures:", "", "```", json.dumps(failures[:5], indent=2), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    if not args.no_report:
        summary = [
            "## The answer decoder on random sequences",
            "",
            f"Command: `python bench/decoder_fuzz.py --model {args.model} --count {args.count}` ({machine()}).",
            "",
            f"{args.count} random sequences over the model's {len(tokenizer)} LLM tokens (a third starting with a "
            "valid header, a third with `<fmt>` and random header tokens, a third anything), each decoded as text "
            f"and as slots: **{len(failures)} raised**. "
            "Details: [benchmarks/decoder_fuzz.md](benchmarks/decoder_fuzz.md).",
        ]
        update_section("decoder_fuzz", "\n".join(summary))


if __name__ == "__main__":
    main()
