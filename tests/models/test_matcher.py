import itertools

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionllm.models.common.matcher import hungarian_match, match_batch


def test_empty_targets_give_empty_matches():
    rows, cols = hungarian_match(torch.zeros(5, 0))
    assert rows.numel() == 0 and cols.numel() == 0
    rows, cols = hungarian_match(torch.zeros(0, 3))
    assert rows.numel() == 0


def test_batched_equals_unbatched():
    torch.manual_seed(0)
    costs = [torch.rand(6, t) for t in (0, 1, 3, 6)]
    batched = match_batch(costs)
    for cost, (rows, cols) in zip(costs, batched, strict=True):
        single_rows, single_cols = hungarian_match(cost)
        assert torch.equal(rows, single_rows) and torch.equal(cols, single_cols)


def test_non_finite_costs_are_avoided():
    cost = torch.tensor([[float("inf"), 1.0], [0.0, float("nan")]])
    rows, cols = hungarian_match(cost)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(0, 4), st.integers(0, 2**31 - 1))
def test_matching_is_optimal(num_predictions, num_targets, seed):
    num_targets = min(num_targets, num_predictions)
    cost = torch.as_tensor(np.random.default_rng(seed).random((num_predictions, num_targets)))
    rows, cols = hungarian_match(cost)
    assert len(rows) == num_targets and len(set(rows.tolist())) == num_targets
    best = min(
        (
            sum(cost[p, t] for t, p in enumerate(perm))
            for perm in itertools.permutations(range(num_predictions), num_targets)
        ),
        default=0.0,
    )
    assert float(cost[rows, cols].sum()) <= float(best) + 1e-9
