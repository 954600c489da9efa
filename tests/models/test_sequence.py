"""The sequence layout shared by training and inference: segments, groups, labels, padding and the mask."""

import pytest
import torch

from visionllm.models.common.sequence import (
    IGNORE,
    PAD,
    SEQUENCE,
    SLOT,
    Segments,
    block_mask,
    pad_segments,
    slot_positions,
)


def test_groups_continue_their_own_positions_and_labels_follow_the_ids():
    row = Segments().add([1, 2, 3]).add([4], labelled=True)
    row.add([10, 11], group=0).add([12], labelled=True, group=0).add([20, 21], group=1)
    assert row.ids == [1, 2, 3, 4, 10, 11, 12, 20, 21]
    assert row.kinds == [SEQUENCE] * 4 + [SLOT] * 5
    assert row.groups == [-1] * 4 + [0, 0, 0, 1, 1]
    assert row.offsets == [0] * 4 + [0, 1, 2, 0, 1]
    assert row.labels == [IGNORE] * 3 + [4] + [IGNORE, IGNORE, 12, IGNORE, IGNORE]
    positions = slot_positions(*(torch.tensor([v]) for v in (row.kinds, row.groups, row.offsets)))
    assert positions.tolist() == [[0, 1, 2, 3, 4, 5, 6, 4, 5]]  # each group sits where a lone answer would
    with pytest.raises(ValueError, match="groups come last"):
        row.add([5])


def test_padding_on_either_side_and_the_mask_it_gives():
    rows = [Segments().add([7, 8, 9]), Segments().add([5])]
    left = pad_segments(rows, pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[7, 8, 9], [0, 0, 5]]
    assert left["kinds"].tolist() == [[SEQUENCE] * 3, [PAD, PAD, SEQUENCE]]
    right = pad_segments([Segments().add([1]).add([2, 3], group=0).add([4], group=1), Segments().add([6])], 0)
    assert right["labels"].tolist() == [[IGNORE] * 4, [IGNORE] * 4]
    assert right["groups"].tolist() == [[-1, 0, 0, 1], [-1, -1, -1, -1]]
    mask = block_mask(right["kinds"], right["groups"])[0]
    assert mask[3].tolist() == [True, False, False, True]  # group 1 sees the shared token and itself only
    assert mask[2].tolist() == [True, True, True, False]
    assert block_mask(right["kinds"], right["groups"])[1].diagonal().all()  # padding sees itself: softmax finite
    with pytest.raises(ValueError, match="side"):
        pad_segments(rows, 0, side="middle")
