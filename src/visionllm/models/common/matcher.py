"""Hungarian matching of predictions to targets (one image at a time, as DETR does)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment.

    Args:
        cost: (num_predictions, num_targets); non-finite entries are treated as very expensive.

    Returns:
        (prediction indices, target indices), int64, sorted by prediction index; empty when there are no targets.
    """
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    matrix = cost.detach().float().cpu().numpy()
    matrix = np.nan_to_num(matrix, nan=1e6, posinf=1e6, neginf=-1e6)
    rows, cols = linear_sum_assignment(matrix)
    order = np.argsort(rows)
    return torch.as_tensor(rows[order], dtype=torch.int64), torch.as_tensor(cols[order], dtype=torch.int64)


def match_batch(costs: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """`hungarian_match` for each image's cost matrix."""
    return [hungarian_match(c) for c in costs]
