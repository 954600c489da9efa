"""Super links: routing tokens that call a task decoder, and the learnable queries that carry the LLM's condition.

When the LLM writes a routing token ([DET], [GRD], [SEG], [POSE], [GEN], [EDIT]), the queries of that route's
decoder family are inserted right after it: 4 for the perception decoders, 64 for generation and editing. The
queries' embeddings come from one learnable table per family; the LLM's last hidden states at the query positions
are the condition its decoder reads. Routing tokens are trained by the text loss, query positions are not.

A detection answer reads "red circle[DET]<query>x4, star[DET]<query>x4": one routed group per category. Training
and generation insert queries the same way (`expand_routes`), for any mix of tasks in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from visionllm.models.common.sequence import Segments

REGION = "<region>"
QUERY = "<query>"

ROUTES: dict[str, str] = {
    "[DET]": "object",
    "[GRD]": "object",
    "[SEG]": "object",
    "[POSE]": "keypoint",
    "[GEN]": "generation",
    "[EDIT]": "generation",
}
"""Each routing token and the decoder family it calls."""

FAMILY_QUERIES: dict[str, int] = {"object": 4, "keypoint": 4, "generation": 64}
"""Queries inserted after a routing token of each family."""

V2_TOKENS: tuple[str, ...] = ("<image>", REGION, QUERY, *ROUTES)
"""v2's added tokens beyond text, in the order a tokenizer gets them."""


@dataclass(frozen=True)
class RouteCall:
    """One routing token in a sequence and the positions of its queries.

    Attributes:
        sample: the sequence's row in the batch.
        route: the routing token, e.g. "[DET]".
        position: where the routing token is.
        queries: (n,) positions of its queries, right after it.
    """

    sample: int
    route: str
    position: int
    queries: Tensor


class SuperLink(nn.Module):
    """The learnable query tables (one per decoder family) and the bookkeeping of routing tokens.

    Args:
        route_ids: the token id of each routing token.
        query_id: the id of the query placeholder.
        width: the LLM's embedding width.

    Each decoder family of the routes gets a table.
    """

    def __init__(self, route_ids: dict[str, int], query_id: int, width: int) -> None:
        super().__init__()
        unknown = sorted(set(route_ids) - set(ROUTES))
        if unknown:
            raise ValueError(f"unknown routing token(s) {unknown}; routes: {list(ROUTES)}")
        self.route_ids = dict(route_ids)
        self.route_of_id = {i: route for route, i in route_ids.items()}
        self.query_id = query_id
        families = sorted({ROUTES[r] for r in route_ids})
        self.tables = nn.ParameterDict(
            {family: nn.Parameter(torch.randn(FAMILY_QUERIES[family], width) * 0.02) for family in families}
        )

    def queries_after(self, token_id: int) -> int:
        """How many queries follow this token (0 for a token that is not a routing token)."""
        route = self.route_of_id.get(token_id)
        return FAMILY_QUERIES[ROUTES[route]] if route is not None else 0

    def expand_routes(self, ids: Sequence[int]) -> list[int]:
        """`ids` with each routing token followed by its family's query placeholders (placeholders already
        present after a routing token are kept, not doubled)."""
        out: list[int] = []
        pending = 0
        for token in ids:
            if token == self.query_id and pending:
                pending -= 1
                out.append(token)
                continue
            out += [self.query_id] * pending
            out.append(token)
            pending = self.queries_after(token)
        return out + [self.query_id] * pending

    def add_to(self, row: Segments, ids: Sequence[int], labelled: bool = True, group: int | None = None) -> Segments:
        """Append `ids` to a sequence with each routing token's queries inserted; when `labelled`, every token but
        the queries is a target of the text loss (the routing tokens too: the LLM learns to call decoders)."""
        run: list[int] = []
        for token in self.expand_routes(ids):
            if token == self.query_id:
                if run:
                    row.add(run, labelled=labelled, group=group)
                    run = []
                row.add([token], group=group)
            else:
                run.append(token)
        if run:
            row.add(run, labelled=labelled, group=group)
        return row

    def calls(self, input_ids: Tensor) -> list[RouteCall]:
        """Every routing token of a (B, L) batch with the positions of its queries.

        Raises:
            ValueError: a routing token not followed by its full set of query placeholders.
        """
        found = []
        for b, row in enumerate(input_ids.tolist()):
            for position, token in enumerate(row):
                n = self.queries_after(token)
                if not n:
                    continue
                queries = torch.arange(position + 1, position + 1 + n)
                if position + n >= len(row) or any(row[q] != self.query_id for q in queries.tolist()):
                    route = self.route_of_id[token]
                    raise ValueError(f"{route} at position {position} of row {b} is not followed by {n} queries")
                found.append(RouteCall(b, self.route_of_id[token], position, queries))
        return found

    def fill(self, embeds: Tensor, input_ids: Tensor) -> Tensor:
        """`embeds` (B, L, D) with each call's query positions holding its family's table, in order."""
        out = embeds.clone()
        for call in self.calls(input_ids):
            table = self.tables[ROUTES[call.route]]
            out[call.sample, call.queries.to(out.device)] = table.to(out.dtype)
        return out

    def conditions(self, hidden: Tensor, input_ids: Tensor) -> list[tuple[RouteCall, Tensor]]:
        """Each call with the LLM's last hidden states at its queries, (n, D): what its decoder reads."""
        return [(call, hidden[call.sample, call.queries.to(hidden.device)]) for call in self.calls(input_ids)]
