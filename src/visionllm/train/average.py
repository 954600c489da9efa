"""A weight average of the trained parameters (`train.ema_decay`).

An exponential moving average with a warm-up (the decay at update n is min(decay, (1 + n) / (10 + n)), so the
first updates are not held to the initial weights), kept in float32 beside the live weights. Diffusion decoders
draw better from it than from the last step's weights: the live ones move with each batch's noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

AVERAGE_FILE = "weight_average.safetensors"


class WeightAverage:
    """The average of a model's trainable parameters (their names as in its state dict)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.live = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.average = {name: p.detach().float().clone() for name, p in self.live.items()}

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, kept in self.average.items():
            kept.lerp_(self.live[name].detach().float(), 1 - decay)
        self.updates += 1

    def state_dict(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """`weights` (a full state dict) with the averaged parameters in place of the live ones, in their dtype."""
        return {name: self.average[name].to(w.dtype) if name in self.average else w for name, w in weights.items()}

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        updates = torch.tensor(self.updates)
        save_file({**self.average, "__updates__": updates}, str(folder / AVERAGE_FILE))

    def load(self, folder: Path) -> bool:
        """Read the average a checkpoint folder holds; False (the live weights kept as the start) if it has none."""
        from safetensors.torch import load_file

        path = folder / AVERAGE_FILE
        if not path.exists():
            return False
        saved = load_file(str(path))
        self.updates = int(saved.pop("__updates__"))
        missing = sorted(set(self.average) - set(saved))
        if missing:
            raise ValueError(f"{path} has no average of {missing[:3]}: the run's trained parts changed since it")
        for name in self.average:
            self.average[name] = saved[name].float()
        return True
