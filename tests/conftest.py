import copy

import numpy as np
import pytest
import torch

from visionllm.config import (
    BackboneConfig,
    DecoderConfig,
    LLMConfig,
    TextEncoderConfig,
    TokenizerConfig,
    VisionLLMConfig,
)
from visionllm.data.shapes.dataset import ShapesWorldLayout, generate_shapesworld
from visionllm.data.shapes.scene import ShapesWorldConfig
from visionllm.models.v1.model import VisionLLM
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.keypoint_decoder import KeypointDecoderConfig
from visionllm.models.v2.model import VisionLLMv2
from visionllm.models.v2.object_decoder import ObjectDecoderConfig


def micro_config() -> VisionLLMConfig:
    """Every part at toy size (a randomly initialised BERT instead of MiniLM, to stay fast)."""
    return VisionLLMConfig(
        image_size=64,
        backbone=BackboneConfig(
            embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic"
        ),
        text_encoder=TextEncoderConfig(
            pretrained=None, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
        ),
        tokenizer=TokenizerConfig(
            d_model=32, num_queries=8, encoder_layers=1, decoder_layers=2, num_heads=2, ffn_dim=64, fusion_heads=2
        ),
        llm=LLMConfig(
            hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=128, tie_embeddings=True
        ),
        decoder=DecoderConfig(coord_range=32, max_points=20, max_classes=16, max_slot_tokens=120, max_new_tokens=6),
    )


@pytest.fixture
def micro_objects() -> ObjectDecoderConfig:
    """v2's object decoder at toy size (a ResNet of 4 tiny stages, width 32, 64 px)."""
    return ObjectDecoderConfig(
        backbone=BackboneConfig(
            embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic"
        ),
        image_size=64,
        d_model=32,
        num_queries=10,
        encoder_layers=1,
        decoder_layers=2,
        num_heads=2,
        ffn_dim=64,
        fusion_heads=2,
    )


@pytest.fixture
def micro_keypoints() -> KeypointDecoderConfig:
    """v2's keypoint decoder at toy size."""
    return KeypointDecoderConfig(decoder_layers=2, num_heads=2, ffn_dim=64, max_instances=4)


MICRO_IMAGE_DECODER = {
    "image_size": 16, "latent": False, "width": 16, "mapper_layers": 1, "mapper_heads": 2,
    "unet": {"block_out_channels": [8, 16], "attention_levels": [False, True], "layers_per_block": 1,
             "attention_head_dim": 8, "norm_num_groups": 4, "pooled_condition": True},
    "beta_schedule": "squaredcos_cap_v2", "steps": 3, "guidance": 2.0, "image_guidance": 1.5,
}  # fmt: skip
"""A generation or editing decoder at toy size: 16 px pixel-space diffusion."""

MICRO_V2 = {
    "model_type": "visionllm-v2",
    "vision": {"image_size": 64, "patch_size": 8, "hidden_size": 32, "num_layers": 4, "num_heads": 2,
               "intermediate_size": 64, "freeze": False},
    "llm": {"vocab_size": 700, "hidden_size": 48, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
            "intermediate_size": 96, "tie_embeddings": True},
    "objects": {"backbone": {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1],
                             "layer_type": "basic"},
                "image_size": 64, "d_model": 32, "num_queries": 10, "encoder_layers": 1, "decoder_layers": 2,
                "num_heads": 2, "ffn_dim": 64, "fusion_heads": 2},
    "keypoints": {"decoder_layers": 1, "num_heads": 2, "ffn_dim": 64, "max_instances": 4},
    "link": {"routes": ["[DET]", "[GRD]", "[SEG]", "[POSE]", "[GEN]", "[EDIT]"]},
    "generation": MICRO_IMAGE_DECODER,
    "editing": MICRO_IMAGE_DECODER,
    "max_new_tokens": 12,
}  # fmt: skip


@pytest.fixture
def micro_v2() -> dict:
    """A v2 model section at toy size (every part, its own 700-entry vocabulary), as a preset holds it."""
    return copy.deepcopy(MICRO_V2)


@pytest.fixture(scope="session")
def micro_v2_model() -> VisionLLMv2:
    """A toy v2 model with every part (random weights), shared by the session: do not train it."""
    torch.manual_seed(0)
    return VisionLLMv2(VisionLLMv2Config.from_dict(copy.deepcopy(MICRO_V2))).eval()


@pytest.fixture(scope="session")
def micro_model() -> VisionLLM:
    torch.manual_seed(0)
    return VisionLLM(micro_config()).eval()


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(3)]


@pytest.fixture(scope="session")
def tiny_shapesworld(tmp_path_factory) -> ShapesWorldLayout:
    """A ShapesWorld folder of 64 px images: 6 train, 4 val (read it, do not write into it)."""
    return generate_shapesworld(
        tmp_path_factory.mktemp("shapesworld") / "w",
        train=6,
        val=4,
        config=ShapesWorldConfig(image_size=64),
        seed=1,
        progress=False,
    )
