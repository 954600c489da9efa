"""Full-size presets are built on the meta device: parameter counts without memory."""

from pathlib import Path

import pytest
import torch

from visionllm.models.v1.model import VisionLLM
from visionllm.train.loop import load_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Exact sizes of the published architectures (without classification heads / pooler / token embeddings).
RESNET50_BACKBONE = 23_508_032
BERT_BASE_WITHOUT_POOLER = 108_891_648
LLAMA_7B_WITHOUT_EMBEDDINGS = 6_476_271_616


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_model():
    config, _ = load_run_config(CONFIGS / "paper.yaml")
    with torch.device("meta"):
        return VisionLLM(config, load_weights=False)


def test_paper_preset_has_the_published_part_sizes(paper_model):
    model = paper_model
    assert count(model.backbone) == RESNET50_BACKBONE
    assert count(model.text_encoder) == BERT_BASE_WITHOUT_POOLER
    lm = model.decoder.backbone_lm
    embeddings = lm.get_input_embeddings().weight.numel() + lm.get_output_embeddings().weight.numel()
    lora = sum(p.numel() for n, p in model.decoder.lm.named_parameters() if "lora_" in n)
    assert count(lm) - embeddings - lora == LLAMA_7B_WITHOUT_EMBEDDINGS
    assert lora == 32 * 2 * (8 * 4096 * 2)  # r=8 adapters on q_proj and v_proj of 32 layers
    # Deformable DETR, d=256, 6 + 6 layers, 3 levels, plus text fusion and heads: 10-20M.
    assert 10e6 < count(model.tokenizer) < 20e6
    total = count(model)
    assert 6.7e9 < total < 7.0e9
    trainable = sum(p.numel() for p in model.decoder.lm.parameters() if p.requires_grad)
    assert trainable == lora  # LoRA: the 7B base weights stay frozen


def test_tiny_preset_is_small():
    config, train = load_run_config(CONFIGS / "tiny_stage1.yaml")
    with torch.device("meta"):
        model = VisionLLM(config, load_weights=False)
    assert count(model) < 45e6
    assert train.tokenizer_only  # stage 1 trains the image tokenizer alone
    # The LLM reads a vocabulary built from the instruction language, not BERT's 30k word pieces.
    assert len(model.processor.tokenizer) < 1500
    assert model.decoder.backbone_lm.get_input_embeddings().weight.shape[0] == len(model.processor.tokenizer)
