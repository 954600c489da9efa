"""The LLM wrapper every version shares: placeholders filled in order, mismatches refused by name."""

import pytest
import torch

from visionllm.formats import tokens as tk
from visionllm.models.common.llm import CausalLanguageModel, PlaceholderMismatch


def test_placeholders_of_any_token_are_filled_in_order_and_the_rest_is_untouched(micro_model):
    llm = micro_model.decoder
    assert isinstance(llm, CausalLanguageModel)
    marker = llm.vocab.token_to_id(tk.FMT_OPEN)  # any added token can serve as a placeholder
    ids = torch.tensor([[5, marker, 6, marker], [marker, 7, marker, 8]])
    values = torch.arange(2 * 2 * llm.hidden_size, dtype=torch.float32).view(2, 2, llm.hidden_size)
    embeds = llm.embed_ids(ids)
    filled = llm.fill_placeholders(embeds, ids, marker, values)
    assert torch.equal(filled[0, 1], values[0, 0]) and torch.equal(filled[0, 3], values[0, 1])
    assert torch.equal(filled[1, 0], values[1, 0]) and torch.equal(filled[1, 2], values[1, 1])
    assert torch.equal(filled[0, [0, 2]], embeds[0, [0, 2]]) and torch.equal(filled[1, [1, 3]], embeds[1, [1, 3]])
    with pytest.raises(PlaceholderMismatch, match=r"\[2, 2\] <fmt> placeholders per sample but 3 vectors"):
        llm.fill_placeholders(embeds, ids, marker, torch.zeros(2, 3, llm.hidden_size))
