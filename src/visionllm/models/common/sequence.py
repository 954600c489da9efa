"""LLM sequences built segment by segment, the one layout training and inference share.

A sequence is shared tokens (instruction, image placeholders, a format header, a text answer), then optionally
parallel groups: the K slots of a structured answer, or the branches of a packed example. Each position has
- a kind: PAD, SEQUENCE (a shared token) or SLOT (a token of a group);
- a group number (-1 outside groups) and an offset inside its group;
- a label: the id it holds where the text loss predicts it, else IGNORE.
A shared token sees the shared tokens up to itself; a group token sees every shared token and its own group up
to itself, at the positions it would have if it were the only group (`block_mask`, `slot_positions`). Ids are
appended piece by piece, never re-tokenised from joined text, so labels cannot drift from ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

PAD, SEQUENCE, SLOT = 0, 1, 2
IGNORE = -100


@dataclass
class Segments:
    """One sequence under construction (see the module docstring)."""

    ids: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    _group_lengths: dict[int, int] = field(default_factory=dict, repr=False)

    def add(self, ids: Sequence[int], *, labelled: bool = False, group: int | None = None) -> Segments:
        """Append `ids`, shared (group None) or to group `group` (continuing that group's positions).

        Args:
            ids: token ids.
            labelled: the ids are targets of the text loss (a header, an answer).
            group: the parallel group they belong to; groups come after every shared token.

        Raises:
            ValueError: shared tokens after a group.
        """
        ids = list(ids)
        n = len(ids)
        if group is None:
            if self._group_lengths:
                raise ValueError("shared tokens cannot follow a group: groups come last in a sequence")
            self.kinds += [SEQUENCE] * n
            self.groups += [-1] * n
            self.offsets += [0] * n
        else:
            start = self._group_lengths.get(group, 0)
            self._group_lengths[group] = start + n
            self.kinds += [SLOT] * n
            self.groups += [group] * n
            self.offsets += range(start, start + n)
        self.ids += ids
        self.labels += ids if labelled else [IGNORE] * n
        return self

    def __len__(self) -> int:
        return len(self.ids)


def pad_segments(rows: Sequence[Segments], pad_id: int, side: str = "right") -> dict[str, Tensor]:
    """Sequences padded to one length: input_ids, kinds, groups, slot_offsets and labels, each (B, L).

    Args:
        rows: the sequences.
        pad_id: the id of padding positions.
        side: "right" (training, slot rows) or "left" (prompts before generation, so that every row ends at once).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max([0, *(len(r) for r in rows)])

    def pad(values: list[int], fill: int) -> list[int]:
        filler = [fill] * (width - len(values))
        return values + filler if side == "right" else filler + values

    fields = {"input_ids": ("ids", pad_id), "kinds": ("kinds", PAD), "groups": ("groups", -1)}
    fields |= {"slot_offsets": ("offsets", 0), "labels": ("labels", IGNORE)}
    return {
        name: torch.tensor([pad(getattr(r, attr), fill) for r in rows], dtype=torch.long).view(len(rows), width)
        for name, (attr, fill) in fields.items()
    }


def block_mask(
    kinds: Tensor, groups: Tensor, kv_kinds: Tensor | None = None, kv_groups: Tensor | None = None
) -> Tensor:
    """Boolean attention mask (B, Q, KV) for sequences of shared tokens followed by groups.

    A shared token sees the shared tokens up to itself; a group token sees every shared token and the tokens of
    its own group up to itself; padding sees nothing but itself (so softmax stays finite).

    Args:
        kinds: (B, Q) PAD / SEQUENCE / SLOT of the query positions (the newest positions of the sequence).
        groups: (B, Q) group number of group positions (-1 elsewhere).
        kv_kinds, kv_groups: the same for all key positions (B, KV) when they extend beyond the queries
            (cached positions come first); default: the queries themselves.
    """
    if kv_kinds is None:
        kv_kinds, kv_groups = kinds, groups
    q_len, kv_len = kinds.shape[1], kv_kinds.shape[1]
    offset = kv_len - q_len
    q_pos = torch.arange(q_len, device=kinds.device)[:, None] + offset
    k_pos = torch.arange(kv_len, device=kinds.device)[None, :]
    causal = (k_pos <= q_pos)[None]
    key_seq = (kv_kinds == SEQUENCE)[:, None, :]
    q_seq = (kinds == SEQUENCE)[:, :, None]
    q_slot = (kinds == SLOT)[:, :, None]
    same_group = (groups[:, :, None] == kv_groups[:, None, :]) & (kv_kinds == SLOT)[:, None, :]
    allowed = (q_seq & key_seq & causal) | (q_slot & (key_seq | (same_group & causal)))
    diagonal = (k_pos == q_pos)[None] & (kinds == PAD)[:, :, None]
    return allowed | diagonal


def slot_positions(kinds: Tensor, groups: Tensor, slot_offsets: Tensor) -> Tensor:
    """Position ids: shared tokens count up; token j of any group sits at (shared tokens) + j."""
    normal = (kinds == SEQUENCE).long().cumsum(1) - 1
    start = (kinds == SEQUENCE).long().sum(1, keepdim=True)
    return torch.where(kinds == SLOT, start + slot_offsets, normal.clamp(min=0))
