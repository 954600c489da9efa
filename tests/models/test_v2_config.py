"""v2's config: the paper preset builds, on the meta device, to CLIP ViT-L/14-336, Vicuna-7B, their links and the
Swin-T object and keypoint decoders."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import SwinConfig, SwinModel

from visionllm.config import ConfigError
from visionllm.formats.tokens import CodecConfig, CodecVocabulary
from visionllm.models.common.llm import CausalLanguageModel
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.keypoint_decoder import KeypointDecoder
from visionllm.models.v2.model import VisionLLMv2
from visionllm.models.v2.object_decoder import ObjectDecoder
from visionllm.models.v2.regions import RegionEncoder
from visionllm.models.v2.superlink import SuperLink
from visionllm.models.v2.vision import Bridge, VisionEncoder

PRESET = Path(__file__).resolve().parents[2] / "configs" / "paper_v2.yaml"


def test_the_paper_preset_has_the_published_part_sizes():
    data = yaml.safe_load(PRESET.read_text())["model"]
    config = VisionLLMv2Config.from_dict(data)
    assert VisionLLMv2Config.from_dict(config.to_dict()) == config
    vocab_size = 32000
    with torch.device("meta"):
        vision = VisionEncoder(config.vision)
        llm = CausalLanguageModel(config.llm, CodecVocabulary(CodecConfig(), offset=vocab_size), vocab_size, False)
        bridge = Bridge(vision.width, llm.hidden_size)
        regions = RegionEncoder(vision.width, llm.hidden_size, patch=config.vision.patch_size)
        link = SuperLink({r: i for i, r in enumerate(config.link.routes)}, query_id=99, width=llm.hidden_size)
        objects = ObjectDecoder(config.objects, llm.hidden_size, load_weights=False)
        keypoints = KeypointDecoder(config.keypoints, llm.hidden_size, config.objects.d_model, 3)
        swin_t = SwinModel(SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7))

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(vision) == 303_507_456  # CLIP ViT-L/14-336
    body = sum(p.numel() for n, p in llm.lm.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    assert body == 6_476_271_616  # the LLaMA-7B layout of Vicuna-7B, without its embeddings
    assert count(bridge) == 20_979_712  # 1024 -> 4096 -> 4096
    assert regions.mask_stack[0].stride == (7, 7) and config.vision.grid**2 == 576
    tables = {f: t.shape for f, t in link.tables.items()}
    assert tables == {"keypoint": (4, 4096), "object": (4, 4096), "generation": (64, 4096)}
    # The object decoder: a Swin-T backbone (the same stages as transformers' Swin-T), the category MLP
    # 4096 -> 256 -> 256, 900 queries of width 256 over 6 + 6 deformable layers.
    body = objects.backbone.swin.swin
    assert count(body.embeddings) + count(body.encoder) == count(swin_t.embeddings) + count(swin_t.encoder)
    assert count(objects.categories.pool) == 4096 * 256 + 256 + 256 * 256 + 256
    assert len(objects.encoder.layers) == 6 and len(objects.decoder.layers) == 6 and config.objects.num_queries == 900
    assert len(keypoints.decoder.layers) == 6 and count(keypoints.names) == count(objects.categories.pool)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"model_type": "visionllm-v1"}, "visionllm-v2"),
        ({"link": {"routes": ["[FLY]"]}}, "unknown routing token"),
        ({"vision": {"image_size": 100}}, "multiple of"),
        ({"regions": {"num_points": 0}}, "at least 1"),
        ({"vision": {"hidden_size": "big"}}, "model.vision.hidden_size must be an integer"),
    ],
)
def test_bad_v2_configs_are_refused_by_field(data, words):
    with pytest.raises(ConfigError, match=words):
        VisionLLMv2Config.from_dict(data)


def test_the_tiny_preset_builds_a_small_model_with_its_own_vocabulary_that_chats():
    data = yaml.safe_load((PRESET.parent / "tiny_v2.yaml").read_text())["model"]
    torch.manual_seed(0)
    model = VisionLLMv2(VisionLLMv2Config.from_dict(data)).eval()
    drawing = [model.generation_decoder, model.editing_decoder]
    size = sum(p.numel() for p in model.parameters()) - sum(p.numel() for d in drawing for p in d.parameters())
    assert 4e6 < size < 12e6, size
    for decoder in drawing:  # two small pixel-space UNets with their mappers
        assert 3e6 < sum(p.numel() for p in decoder.parameters()) < 8e6
    assert len(model.processor.tokenizer) <= 1024 + 10 and model.processor.num_image_tokens == 64
    reply = model.chat(np.zeros((90, 120, 3), np.uint8), [{"role": "user", "content": "<image> what is there?"}])
    assert isinstance(reply.text, str)  # untrained: any text, but the whole path runs
