"""What a model of a config needs before it is built: its parameters (counted on the meta device, no memory), the
memory of its weights, gradients and optimiser states per GPU (plain data parallel, ZeRO-2, ZeRO-3), and where
each part's weights come from (a local folder of real weights, or a fresh start).

    visionllm memory --config configs/paper_v2.yaml --gpus 8

Activations are not counted: they grow with the batch and the sequence (gradient checkpointing cuts them), so the
figures are what a batch of one needs at least.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from visionllm.models.loading import MODEL_CLASSES

GIB = 1024**3
LLAMA_VOCABULARY = 32_000


@dataclass(frozen=True)
class MemoryPlan:
    """Parameter counts and the memory of training and inference, in bytes.

    Attributes:
        parts: parameters per top-level part, (total, trainable).
    """

    parts: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, model: torch.nn.Module) -> MemoryPlan:
        """The plan of a built model (on any device, the meta device included), as its parts are frozen now."""
        parts: dict[str, tuple[int, int]] = {}
        for name, child in model.named_children():
            params = list(child.parameters())
            if params:
                parts[name] = (sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))
        return cls(parts)

    @property
    def total(self) -> int:
        return sum(t for t, _ in self.parts.values())

    @property
    def trainable(self) -> int:
        return sum(t for _, t in self.parts.values())

    def training(self, gpus: int = 1, zero: int = 0, bf16_weights: bool = False) -> float:
        """Bytes per GPU to train: weights (fp32, or bf16 with fp32 master copies of the trainable ones),
        gradients of the trainable ones, AdamW's two fp32 moments. ZeRO-2 shares the gradients and optimiser
        states among the GPUs, ZeRO-3 the weights too."""
        frozen = self.total - self.trainable
        weight_bytes = 2 if bf16_weights else 4
        weights = frozen * weight_bytes + self.trainable * (weight_bytes + (4 if bf16_weights else 0))
        grads = self.trainable * weight_bytes
        optimiser = self.trainable * 8
        if zero >= 2:
            grads, optimiser = grads / gpus, optimiser / gpus
        if zero >= 3:
            weights = weights / gpus
        return weights + grads + optimiser

    def inference(self, bf16: bool = True) -> float:
        return self.total * (2 if bf16 else 4)

    def table(self, gpus: int = 1) -> str:
        """The plan as text: parts, then memory per GPU for each way of training."""
        lines = [f"{'part':<22}{'parameters':>16}{'trainable':>16}"]
        for name, (total, trainable) in self.parts.items():
            lines.append(f"{name:<22}{total:>16,}{trainable:>16,}")
        lines.append(f"{'total':<22}{self.total:>16,}{self.trainable:>16,}")
        lines.append("")
        lines.append(f"memory per GPU on {gpus} GPU(s), activations not counted:")
        lines.append(f"  inference, bf16 weights                  {self.inference(True) / GIB:9.1f} GiB")
        lines.append(f"  inference, fp32 weights                  {self.inference(False) / GIB:9.1f} GiB")
        for label, zero, bf16 in (
            ("train, fp32 weights (DDP)", 0, False),
            ("train, bf16 weights + fp32 master (DDP)", 0, True),
            ("train, bf16 weights, ZeRO-2", 2, True),
            ("train, bf16 weights, ZeRO-3", 3, True),
        ):
            lines.append(f"  {label:<41}{self.training(gpus, zero, bf16) / GIB:9.1f} GiB")
        return "\n".join(lines)


def memory_plan(model_config: Any, frozen: list[str] | None = None) -> MemoryPlan:
    """The plan of a model config (built on the meta device: no weights are read or allocated), with the groups
    in `frozen` (`train.freeze`) kept fixed."""
    model_class = MODEL_CLASSES[model_config.model_type]
    model_config = with_vocabulary(model_config)
    with torch.device("meta"):
        model = model_class(model_config, load_weights=False)
    if frozen:
        model.freeze(frozen)
    return MemoryPlan.of(model)


def with_vocabulary(model_config: Any) -> Any:
    """A v2 config whose vocabulary comes with its LLM's folder, which is not given (a paper preset before its
    `llm.pretrained` is set): the same with LLaMA's 32,000 tokens, so that it can be built (to count, or time)."""
    llm = getattr(model_config, "llm", None)
    if model_config.model_type == "visionllm-v2" and not (llm.pretrained or llm.tokenizer or llm.vocab_size):
        return dataclasses.replace(model_config, llm=dataclasses.replace(llm, vocab_size=LLAMA_VOCABULARY))
    return model_config


def weight_sources(model_config: Any) -> list[tuple[str, str]]:
    """Where each pretrainable part's weights come from: ("backbone", "loaded from /models/resnet-50"), or
    ("llm", "initialised (random)")."""
    found = []
    for name in ("backbone", "text_encoder", "llm", "vision", "generation", "editing"):
        section = getattr(model_config, name, None)
        if section is None or not hasattr(section, "pretrained"):
            continue
        found.append((name, f"loaded from {section.pretrained}" if section.pretrained else "initialised (random)"))
    objects = getattr(model_config, "objects", None)
    backbone = getattr(objects, "backbone", None)
    if backbone is not None:
        source = f"loaded from {backbone.pretrained}" if backbone.pretrained else "initialised (random)"
        found.append(("objects.backbone", source))
    return found
