"""The LLM every model version wraps: any transformers causal LM with the codec's added tokens, optionally frozen
or with LoRA, placeholders (`<image>`, `<region>`) filled with vectors, and the cached forward."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from visionllm.config import LLMConfig
from visionllm.formats import tokens as tk
from visionllm.formats.tokens import CodecVocabulary
from visionllm.models.common.backbone import sine_embed


def configured_tokenizer(config: LLMConfig) -> PreTrainedTokenizerBase | None:
    """The LLM tokenizer a config names: a local folder (`tokenizer`, else `pretrained`), or a vocabulary of
    `vocab_size` built from the project's language (`common.vocabulary`); None when it names none."""
    source = config.tokenizer or config.pretrained
    if source:
        return AutoTokenizer.from_pretrained(str(source))
    if config.vocab_size:
        from visionllm.models.common.vocabulary import instruction_corpus, train_wordpiece

        return train_wordpiece(instruction_corpus(), config.vocab_size)
    return None


def complete_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer the beginning, end and padding tokens a causal LM needs, from the ones it has (a BERT-style
    vocabulary: [CLS] begins, [SEP] ends; padding is the end token when there is none).

    Raises:
        ValueError: no token can begin or end a sequence.
    """
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.cls_token or tokenizer.eos_token
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None or tokenizer.eos_token is None:
        raise ValueError("the LLM tokenizer needs a beginning and an end token")


class PlaceholderMismatch(ValueError):
    """The placeholders of a sequence do not match the vectors meant for them."""


def build_causal_lm(config: LLMConfig, vocab_size: int, load_weights: bool = True) -> PreTrainedModel:
    """The LLM: a local pretrained causal LM, or a LLaMA built from the config's layout."""
    if config.pretrained:
        if load_weights:
            return AutoModelForCausalLM.from_pretrained(config.pretrained, attn_implementation="sdpa")
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config.pretrained))
    llama = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=config.tie_embeddings,
    )
    llama._attn_implementation = "sdpa"
    return LlamaForCausalLM(llama)


class CausalLanguageModel(nn.Module):
    """A causal LM with the codec's tokens added to its vocabulary.

    New embedding rows start near the old rows' mean, spread like them; location tokens also get a sine code of
    their value. `llm.freeze` fixes the LM's weights; `llm.lora` wraps it with LoRA adapters (the wrapped modules
    keep their names under `lm`). Model versions subclass it and add their own heads.

    Args:
        llm_config: which LLM.
        vocab: the codec vocabulary (ids of the added tokens in the tokenizer), or None for a model whose added
            tokens are only markers (v2: `<image>`, `<region>`, queries, routes): they keep the LM's own init.
        vocab_size: the tokenizer's length (with the added tokens).
        load_weights: load pretrained LLM weights (False when a checkpoint will overwrite them).
    """

    def __init__(
        self, llm_config: LLMConfig, vocab: CodecVocabulary | None, vocab_size: int, load_weights: bool = True
    ):
        super().__init__()
        self.vocab = vocab
        self.lm = build_causal_lm(llm_config, vocab_size, load_weights)
        base_rows = self.lm.get_input_embeddings().weight.shape[0]
        if base_rows < vocab_size:
            self.lm.resize_token_embeddings(vocab_size, mean_resizing=False)
        self.hidden_size: int = self.lm.config.hidden_size
        if (load_weights or not llm_config.pretrained) and vocab is not None:
            self._init_added_rows(first_new=min(base_rows, vocab.offset))
        if llm_config.freeze:
            self.lm.requires_grad_(False)
        if llm_config.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = llm_config.lora
            self.lm = get_peft_model(
                self.lm,
                LoraConfig(
                    r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
                ),
            )

    @torch.no_grad()
    def _init_added_rows(self, first_new: int) -> None:
        """New rows near the old rows' mean and spread like them, so that each is distinct (class tokens must be
        told apart to be copied from a binding); location tokens also get a sine code of their value, so that
        neighbouring bins start out similar."""
        matrices = (self.lm.get_input_embeddings().weight, self.lm.get_output_embeddings().weight)
        r = self.vocab.config.coord_range
        ids = torch.tensor(self.vocab.encode(tk.loc_token(v) for v in range(-r, r + 1)))
        values = torch.arange(-r, r + 1, dtype=torch.float32) / (2 * r) + 0.5
        for matrix in {id(m): m for m in matrices}.values():
            old = matrix[:first_new]
            mean, std = old.mean(0), old.std(0).mean().clamp(min=1e-3)
            matrix[first_new:] = mean + torch.randn_like(matrix[first_new:]) * std
            code = sine_embed(values[:, None], matrix.shape[1])[:, : matrix.shape[1]]
            matrix[ids] = mean + std * code.to(matrix.dtype)

    @property
    def backbone_lm(self) -> PreTrainedModel:
        """The causal LM without LoRA wrapping."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def embed_ids(self, input_ids: Tensor) -> Tensor:
        return self.backbone_lm.get_input_embeddings()(input_ids)

    def fill_placeholders(self, embeds: Tensor, input_ids: Tensor, placeholder_id: int, values: Tensor) -> Tensor:
        """`embeds` with the positions of `placeholder_id` replaced by `values` (B, N, D), in order per sample.

        Raises:
            PlaceholderMismatch: a sample's placeholder count differs from N.
        """
        placeholders = input_ids == placeholder_id
        counts = placeholders.sum(1)
        if (counts != values.shape[1]).any():
            known = self.vocab is not None and placeholder_id >= self.vocab.offset
            name = self.vocab.tokens[placeholder_id - self.vocab.offset] if known else ""
            raise PlaceholderMismatch(
                f"{counts.tolist()} {name or placeholder_id} placeholders per sample but {values.shape[1]} vectors "
                "each; the processor expands each placeholder into exactly as many positions as it has vectors"
            )
        return embeds.masked_scatter(placeholders.unsqueeze(-1), values.to(embeds.dtype))

    def run(self, embeds: Tensor, mask4d: Tensor, position_ids: Tensor, cache=None):
        """The LLM body: (B, L, D) embeddings -> last hidden states (B, L, D) (and the cache)."""
        out = self.backbone_lm.model(
            inputs_embeds=embeds,
            attention_mask=mask4d,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state, out.cache

    def head_weight(self) -> Tensor:
        return self.backbone_lm.get_output_embeddings().weight

    def vocab_logits(self, hidden: Tensor) -> Tensor:
        return self.backbone_lm.get_output_embeddings()(hidden)
