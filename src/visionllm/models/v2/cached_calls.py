"""Training the image decoders on query states read once (`train.cache_query_states`).

A stage that trains the generation and editing decoders alone (stage 5: the chat model frozen) would run the frozen
chat model at every step to get query states that do not change: for the tiny preset that pass costs twice the
decoders' own. With the cache, the frozen chat model reads each drawing's conversation once, before the first step,
and the stage trains on those states; a step then costs the decoders' passes alone.

What differs from the live stream: each drawing has the states of one conversation (its request phrased by a
template drawn from the stream's seed and the drawing), where the live stream phrases every example anew. The
states are those of the model in evaluation mode, kept in bfloat16; target and source pixels in float16.

The cache is a file of the run (`query_states.safetensors`): a resumed run reads it instead of computing it again;
a cache that other weights or another seed made (`_made_by`) is made again.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm.auto import tqdm

from visionllm.formats.tasks import Task
from visionllm.models.v2.perception import ROUTE

if TYPE_CHECKING:
    from visionllm.models.v2.data import ChatMixture
    from visionllm.models.v2.model import VisionLLMv2

logger = logging.getLogger(__name__)

UPSTREAM = ("vision", "bridge", "regions", "llm", "link")
"""The parts that make the query states: a stage on cached states keeps them all frozen."""

READ_BATCH = 32
"""Conversations per pass of the chat model while the cache is computed."""


@dataclass
class CachedCall:
    """One routed image call of the cache: its task, its query states (Q, D), the image it should make (3, S, S)
    and, for an edit, the image it edits (3, S, S); pixels in [-1, 1]."""

    task: Task
    states: Tensor
    target: Tensor
    source: Tensor | None = None


@dataclass
class CachedCallBatch:
    """Cached calls grouped by task: task -> (states (B, Q, D), targets (B, 3, S, S), sources or None)."""

    calls: dict[Task, tuple[Tensor, Tensor, Tensor | None]]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CachedCallBatch:
        return CachedCallBatch(
            {
                task: tuple(t.to(device, non_blocking=non_blocking) if t is not None else None for t in group)
                for task, group in self.calls.items()
            }
        )

    @classmethod
    def of(cls, calls: Sequence[CachedCall]) -> CachedCallBatch:
        grouped: dict[Task, list[CachedCall]] = {}
        for call in calls:
            grouped.setdefault(call.task, []).append(call)
        return cls(
            {
                task: (
                    torch.stack([c.states for c in group]),
                    torch.stack([c.target for c in group]),
                    torch.stack([c.source for c in group]) if group[0].source is not None else None,
                )
                for task, group in grouped.items()
            }
        )


class CachedCallStream(torch.utils.data.Dataset):
    """The image calls of a mixture's drawings with cached query states: example i is a function of (seed, i).

    Each batch holds each task in its share of the batch (the mix's weights), at the same positions.

    Args:
        mixture: the stage's stream (its image tasks, weights, drawings and seed).
        model: the model whose frozen chat model makes the states (evaluation mode while it reads).
        path: the cache file: read when it exists and matches the mixture, else computed and written there.
        batch_size: the stage's batch (the global one); 1: each call's task is drawn by the weights.
        progress: show a progress bar while the cache is computed.
    """

    def __init__(
        self, mixture: ChatMixture, model: VisionLLMv2, path: Path, batch_size: int = 1, progress: bool = True
    ) -> None:
        self.tasks, self.weights = mixture.tasks, mixture.weights
        self.seed, self.length = mixture.seed, mixture.length
        self.slots = _slots(mixture.weights, batch_size) if batch_size > 1 else None
        counts = {task: len(mixture.samples[task]) for task in self.tasks}
        made_by = _made_by(model, mixture.seed)
        self.cache = _read(path, counts, made_by)
        if self.cache is None:
            self.cache = {task: _collect(mixture, model, task, progress) for task in self.tasks}
            _write(path, self.cache, made_by)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> CachedCall:
        rng = random.Random(self.seed * 1_000_003 + index)
        if self.slots is None:  # no batch to share out: each call's task drawn by the weights
            task = rng.choices(self.tasks, self.weights)[0]
        else:
            task = self.tasks[self.slots[index % len(self.slots)]]
        states, targets, sources = self.cache[task]
        k = rng.randrange(len(states))
        return CachedCall(task, states[k], targets[k], sources[k] if sources is not None else None)


def _made_by(model: VisionLLMv2, seed: int) -> str:
    """What the states are a function of besides the drawings: the stream's seed (the requests' phrasing) and the
    weights of the parts that make them (their sums, a fingerprint that a changed start checkpoint changes)."""
    sums = [float(p.detach().double().sum()) for name in UPSTREAM for p in getattr(model, name).parameters()]
    return f"seed={seed} upstream={sum(sums)!r}"


def _slots(weights: Sequence[float], batch_size: int) -> list[int]:
    """Which task each position of a batch holds: shares of the batch as the weights say (largest remainders), the
    same in every batch. A batch whose decoders see a different number of calls at each step runs their
    convolutions at new shapes at each step, a third slower on CPU."""
    total = sum(weights)
    exact = [w / total * batch_size for w in weights]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda t: exact[t] - counts[t], reverse=True)
    for t in by_remainder[: batch_size - sum(counts)]:
        counts[t] += 1
    return [t for t, n in enumerate(counts) for _ in range(n)]


@torch.no_grad()
def _collect(
    mixture: ChatMixture, model: VisionLLMv2, task: Task, progress: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The query states, targets and sources of every drawing of a task, one conversation each."""
    decoder = model.generation_decoder if task is Task.GENERATION else model.editing_decoder
    assert decoder is not None
    drawings = mixture.samples[task]
    modes = [(module, module.training) for module in model.modules()]  # the loop's frozen batch norms stay in eval
    model.eval()
    states, targets, sources = [], [], []
    try:
        for start in tqdm(
            range(0, len(drawings), READ_BATCH), desc=f"query states ({task.value})", disable=not progress
        ):
            examples = [
                mixture.example(task, drawing, random.Random(f"cache:{mixture.seed}:{task.value}:{k}"))
                for k, drawing in enumerate(drawings[start : start + READ_BATCH], start)
            ]
            batch = model.collate(examples).to(model.device)
            hidden = model.hidden_states(batch)
            calls = [s for call, s in model.link.conditions(hidden, batch.input_ids) if call.route == ROUTE[task]]
            assert len(calls) == len(examples), "one image call per conversation"
            states.append(torch.stack(calls).to(torch.bfloat16).cpu())
            targets.append(torch.stack([e.targets.image for e in examples]).half())
            if decoder.editing:
                sources.append(model.decoder_pixels(batch.pixel_values, decoder).half().cpu())
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(states), torch.cat(targets), torch.cat(sources) if sources else None


def _write(path: Path, cache: dict[Task, tuple[Tensor, Tensor, Tensor | None]], made_by: str) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for task, (states, targets, sources) in cache.items():
        tensors |= {f"{task.value}.states": states, f"{task.value}.targets": targets}
        if sources is not None:
            tensors[f"{task.value}.sources"] = sources
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"made_by": made_by})
    tmp.replace(path)


def _read(path: Path, counts: dict[Task, int], made_by: str) -> dict[Task, tuple[Tensor, Tensor, Tensor | None]] | None:
    """The cache in `path` if the same weights and seed made it (`_made_by`) and it holds every task of `counts`
    with that many calls; None otherwise."""
    if not path.exists():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as opened:
        if (opened.metadata() or {}).get("made_by") != made_by:
            logger.info("%s was made by other weights or another seed: computing the query states again", path)
            return None
    tensors = load_file(str(path))
    cache = {}
    for task, count in counts.items():
        states = tensors.get(f"{task.value}.states")
        if states is None or len(states) != count:
            logger.info("%s does not match this stage's drawings: computing the query states again", path)
            return None
        cache[task] = (states, tensors[f"{task.value}.targets"], tensors.get(f"{task.value}.sources"))
    logger.info("query states read from %s", path)
    return cache
