"""v2's chat template: answers are the only targets, routing tokens' queries are inserted unlabelled, and pieces that
would tokenise differently from the whole conversation are refused."""

import copy

import pytest

from visionllm.models.common.sequence import IGNORE
from visionllm.models.v2.chat import ChatTemplateError, Turn, build_chat, render_chat
from visionllm.models.v2.superlink import QUERY, ROUTES, SuperLink


@pytest.fixture(scope="module")
def tokenizer(micro_model):
    tok = copy.deepcopy(micro_model.processor.tokenizer)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<region>", QUERY, *ROUTES]}, replace_extra_special_tokens=False
    )
    return tok


TURNS = [
    Turn("user", "<image> what is in region1 <region>?"),
    Turn("assistant", "a red circle."),
    Turn("user", "find the stars."),
    Turn("assistant", "star [DET], red star [DET]"),
]


def test_only_the_answers_are_labelled_and_they_read_back(tokenizer):
    row = build_chat(tokenizer, TURNS)
    labelled = [i for i, label in zip(row.ids, row.labels, strict=True) if label != IGNORE]
    text = tokenizer.decode(labelled, skip_special_tokens=False)
    assert "a red circle." in text and "star [DET], red star [DET]" in text and "user" not in text.lower()
    assert labelled.count(tokenizer.eos_token_id) == 2
    assert tokenizer.decode(row.ids[1:], skip_special_tokens=False).lower().startswith("a chat between")


def test_routing_tokens_call_their_queries_unlabelled(tokenizer):
    vocab = tokenizer.get_vocab()
    link = SuperLink({r: vocab[r] for r in ROUTES}, query_id=vocab[QUERY], width=8)
    row = build_chat(tokenizer, TURNS, link)
    det = vocab["[DET]"]
    positions = [k for k, i in enumerate(row.ids) if i == det]
    assert len(positions) == 2
    for k in positions:
        assert row.ids[k + 1 : k + 5] == [link.query_id] * 4 and row.labels[k] == det
        assert row.labels[k + 1 : k + 5] == [IGNORE] * 4
    assert len(row) == len(build_chat(tokenizer, TURNS)) + 8


def test_a_conversation_awaiting_an_answer_ends_ready_for_generation(tokenizer):
    row = build_chat(tokenizer, TURNS[:3])
    assert render_chat(TURNS[:3]).endswith("USER: find the stars. ASSISTANT:")
    assert tokenizer.convert_ids_to_tokens(row.ids[-2:]) == ["assistant", ":"]
    last_answer_end = max(k for k, i in enumerate(row.ids) if i == tokenizer.eos_token_id)
    assert all(label == IGNORE for label in row.labels[last_answer_end + 1 :])


class Shifting:
    """A tokenizer whose pieces tokenise differently from the whole text (as some BPE vocabularies do)."""

    def __init__(self, inner):
        self.inner = inner
        self.bos_token_id, self.eos_token_id, self.eos_token = inner.bos_token_id, inner.eos_token_id, inner.eos_token

    def __call__(self, text, add_special_tokens=False):
        out = self.inner(text, add_special_tokens=add_special_tokens)
        if text.startswith("USER:"):
            out["input_ids"] = [*out["input_ids"], self.inner.unk_token_id]
        return out

    def convert_ids_to_tokens(self, ids):
        return self.inner.convert_ids_to_tokens(ids)


def test_pieces_that_tokenise_differently_are_refused_and_roles_must_alternate(tokenizer):
    with pytest.raises(ChatTemplateError, match="tokenise differently from the whole conversation"):
        build_chat(Shifting(tokenizer), TURNS)
    with pytest.raises(ChatTemplateError, match="turn 0 is 'assistant'"):
        build_chat(tokenizer, [Turn("assistant", "hi")])
    with pytest.raises(ChatTemplateError, match="at least one user turn"):
        build_chat(tokenizer, [])
    with pytest.raises(ChatTemplateError, match="inserted by the model"):
        build_chat(tokenizer, [Turn("user", f"hi {QUERY}")])
