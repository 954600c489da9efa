"""What a loss needs to be the same on N processes as on one: batch-wide normalisers summed over the processes.

Under data parallelism (DDP, FSDP, DeepSpeed) each process computes the loss of its share of the global batch and
the gradients are averaged. A loss that is a mean over samples averages to the global batch's loss. A loss
normalised by a count over the batch (the number of target boxes, as DETR normalises, or of answers) does not: each
process would divide by its own count. `global_count` gives the count over all processes divided by their number,
so that the averaged gradient is the one-process gradient of the global batch, as Deformable DETR's reference code
does with its `num_boxes`. In one process it is the count itself.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def process_state():
    """accelerate's view of this process among those launched (one, when not launched by torchrun / accelerate)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_count(count: int | Tensor, device: torch.device | None = None) -> Tensor:
    """max(1, the count summed over all processes) / the number of processes, as a float tensor.

    Every process must call it the same number of times (it is a collective operation).
    """
    total = torch.as_tensor(count, dtype=torch.float32, device=device).detach().clone()
    size = world_size()
    if size > 1:
        dist.all_reduce(total)
    return total.clamp(min=1.0) / size
