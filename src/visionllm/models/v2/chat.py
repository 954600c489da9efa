"""v2's multi-turn chat template (Vicuna v1), built segment by segment.

    <system> USER: <user turn 1> ASSISTANT: <answer 1></s>USER: <user turn 2> ASSISTANT: <answer 2></s>...

A user turn holds the image (`<image>`, in the first turn that shows it) and visual prompts (`<region>`) as
placeholders. Only the assistant's answers (with their routing tokens, and the end token) are targets of the text
loss; the queries a routing token calls are inserted after it and are not. The ids are built piece by piece, and
checked against tokenising the whole rendered conversation at once: a template whose pieces would tokenise
differently raises `ChatTemplateError` instead of training on shifted labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from visionllm.models.common.sequence import Segments
from visionllm.models.v2.superlink import QUERY, SuperLink

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


class ChatTemplateError(ValueError):
    """A conversation that cannot be laid out: roles out of order, or pieces that tokenise differently together."""


@dataclass(frozen=True)
class Turn:
    """One message: role "user" or "assistant", and its text (placeholders included)."""

    role: str
    text: str


def render_chat(turns: Sequence[Turn], system: str = VICUNA_SYSTEM, eos: str = "</s>") -> str:
    """The conversation as one string (what `build_chat`'s ids spell, queries left out)."""
    _check_roles(turns)
    parts = [system]
    for turn in turns:
        parts.append(f" USER: {turn.text}" if turn.role == "user" else f" ASSISTANT: {turn.text}{eos}")
    if turns[-1].role == "user":
        parts.append(" ASSISTANT:")
    return "".join(parts)


def build_chat(
    tokenizer: PreTrainedTokenizerBase,
    turns: Sequence[Turn],
    link: SuperLink | None = None,
    system: str = VICUNA_SYSTEM,
) -> Segments:
    """The conversation's sequence: everything shared, answers labelled, routing tokens' queries inserted.

    A conversation that ends with a user turn ends with " ASSISTANT:", ready for generation.

    Raises:
        ChatTemplateError: roles that do not alternate from the user, or ids that differ from tokenising the whole
            rendered conversation.
    """
    _check_roles(turns)
    eos = tokenizer.eos_token_id

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids if text else []

    row = Segments().add([tokenizer.bos_token_id, *ids(system)])
    for turn in turns:
        if turn.role == "user":
            row.add(ids(f"USER: {turn.text} ASSISTANT:"))
        elif link is not None:
            link.add_to(row, [*ids(turn.text), eos])
        else:
            row.add([*ids(turn.text), eos], labelled=True)
    whole = [tokenizer.bos_token_id, *ids(render_chat(turns, system, eos=tokenizer.eos_token))]
    built = [i for i in row.ids if link is None or i != link.query_id]
    if built != whole:
        at = next((k for k, (a, b) in enumerate(zip(built, whole, strict=False)) if a != b), len(whole))
        ours, theirs = (tokenizer.convert_ids_to_tokens(seq[at : at + 3]) for seq in (built, whole))
        raise ChatTemplateError(
            f"the chat template's pieces tokenise differently from the whole conversation at token {at} "
            f"({ours} vs {theirs}): use a tokenizer that splits at the spaces around the template's words"
        )
    return row


def _check_roles(turns: Sequence[Turn]) -> None:
    if not turns:
        raise ChatTemplateError("a conversation needs at least one user turn")
    for index, turn in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if turn.role != expected:
            raise ChatTemplateError(f"turn {index} is {turn.role!r}: turns alternate, user first")
        if QUERY in turn.text:
            raise ChatTemplateError(f"turn {index} holds {QUERY}: queries are inserted by the model, not written")
