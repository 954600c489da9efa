"""Super links: queries inserted after routing tokens in training and generation alike, filled from their family's
table, read back as the decoders' conditions; routing tokens are trained, queries are not."""

import pytest
import torch

from visionllm.models.common.sequence import IGNORE, Segments, pad_segments
from visionllm.models.v2.superlink import FAMILY_QUERIES, SuperLink

DET, POSE, GEN, Q = 50, 51, 52, 99
WORDS = [10, 11, 12, 13]


@pytest.fixture
def link():
    torch.manual_seed(0)
    return SuperLink({"[DET]": DET, "[POSE]": POSE, "[GEN]": GEN}, query_id=Q, width=8)


def test_queries_follow_each_routing_token_and_expanding_twice_changes_nothing(link):
    ids = [10, DET, 11, DET, 12, POSE, GEN]
    expanded = link.expand_routes(ids)
    assert expanded == [10, DET, *[Q] * 4, 11, DET, *[Q] * 4, 12, POSE, *[Q] * 4, GEN, *[Q] * 64]
    assert link.expand_routes(expanded) == expanded
    assert link.expand_routes([10, DET, Q, 11]) == [10, DET, Q, Q, Q, Q, 11]  # a partial set is completed


def test_routing_tokens_are_trained_and_queries_are_not(link):
    row = link.add_to(Segments().add([1, 2]), [10, DET, 11, DET])
    assert row.ids == [1, 2, 10, DET, Q, Q, Q, Q, 11, DET, Q, Q, Q, Q]
    assert row.labels == [IGNORE, IGNORE, 10, DET, *[IGNORE] * 4, 11, DET, *[IGNORE] * 4]


def test_a_batch_of_mixed_routes_fills_and_reads_each_call_in_order(link):
    rows = [
        link.add_to(Segments().add([1]), [10, DET, 11, DET]),
        link.add_to(Segments().add([1, 2, 3]), [12, POSE]),
        Segments().add([1, 13]),  # a text answer: no call
    ]
    batch = pad_segments(rows, pad_id=0)["input_ids"]
    calls = link.calls(batch)
    assert [(c.sample, c.route, c.position) for c in calls] == [(0, "[DET]", 2), (0, "[DET]", 8), (1, "[POSE]", 4)]
    embeds = torch.zeros(*batch.shape, 8)
    filled = link.fill(embeds, batch)
    assert torch.equal(filled[0, 3:7], link.tables["object"].detach()) and torch.equal(filled[0, 9:13], filled[0, 3:7])
    assert torch.equal(filled[1, 5:9], link.tables["keypoint"].detach())
    assert filled[2].abs().sum() == 0 and filled[0, :3].abs().sum() == 0
    hidden = torch.randn(*batch.shape, 8)
    conditions = link.conditions(hidden, batch)
    assert [c.shape for _, c in conditions] == [(4, 8)] * 3 and torch.equal(conditions[2][1], hidden[1, 5:9])
    filled.sum().backward()
    assert link.tables["object"].grad.abs().sum() > 0 and link.tables["generation"].grad is None


def test_a_routing_token_without_its_queries_is_an_error(link):
    with pytest.raises(ValueError, match=r"\[DET\] at position 1 of row 0 is not followed by 4 queries"):
        link.calls(torch.tensor([[10, DET, Q, 11, 0, 0]]))
    assert FAMILY_QUERIES == {"object": 4, "keypoint": 4, "generation": 64}
    with pytest.raises(ValueError, match="unknown routing token"):
        SuperLink({"[FLY]": 7}, query_id=Q, width=8)
