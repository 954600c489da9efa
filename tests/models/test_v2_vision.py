"""v2's CLIP encoder read at its penultimate layer, its region levels, the bridge, and the paper's sizes."""

import pytest
import torch

from visionllm.config import BackboneConfig, ConfigError
from visionllm.models.v2.regions import RegionEncoder
from visionllm.models.v2.vision import Bridge, VisionConfig, VisionEncoder

TINY = VisionConfig(image_size=64, patch_size=8, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64)


def test_image_tokens_come_from_the_penultimate_layer_without_the_class_token():
    torch.manual_seed(0)
    encoder = VisionEncoder(TINY).eval()
    pixels = torch.randn(2, 3, 64, 64)
    tokens, levels = encoder(pixels)
    assert tokens.shape == (2, 64, 32) and len(levels) == 3 and levels[-1].shape == (2, 8, 8, 32)
    states = encoder.clip(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert torch.equal(tokens, states[-2][:, 1:]) and torch.equal(levels[0].flatten(1, 2), states[-4][:, 1:])
    assert not any(p.requires_grad for p in encoder.parameters())  # frozen, as in every stage of the paper
    region = RegionEncoder(32, 48, patch=8)
    masks = torch.zeros(1, 64, 64)
    masks[0, 8:24, 8:24] = 1
    assert region(pixels, masks, torch.tensor([1]), levels).shape == (1, 48)
    assert Bridge(32, 48)(tokens).shape == (2, 64, 48)


def test_a_convolutional_encoder_gives_a_stride_16_grid_of_tokens_and_three_levels():
    torch.manual_seed(0)
    cnn = BackboneConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic")
    config = VisionConfig(image_size=64, patch_size=16, hidden_size=24, num_layers=2, backbone=cnn, freeze=False)
    encoder = VisionEncoder(config).eval()  # (batch norm mixes a batch in training mode)
    pixels = torch.randn(2, 3, 64, 64, requires_grad=True)
    tokens, levels = encoder(pixels)
    assert tokens.shape == (2, 16, 24) and [tuple(level.shape) for level in levels] == [(2, 4, 4, 24)] * 3
    (tokens[0, 5] * torch.arange(24.0)).sum().backward()  # a plain sum of a normalised vector is constant
    assert pixels.grad[1].abs().sum() == 0 and pixels.grad[0].abs().sum() > 0  # each image reads only itself
    masks = torch.zeros(1, 64, 64)
    masks[0, 8:24, 8:24] = 1
    assert RegionEncoder(24, 48, patch=16)(pixels, masks, torch.tensor([1]), levels).shape == (1, 48)
    with pytest.raises(ConfigError, match="patch_size must be 16"):
        VisionConfig(image_size=64, patch_size=8, num_layers=2, backbone=cnn)


def test_a_convolutional_encoder_loads_a_trained_models_backbone_where_names_and_shapes_match(tmp_path):
    from safetensors.torch import save_file

    from visionllm.models.common.checkpoint import CheckpointError

    cnn = BackboneConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic")
    encoder = VisionEncoder(VisionConfig(image_size=64, patch_size=16, hidden_size=24, backbone=cnn, freeze=False))
    before = encoder.cnn.state_dict()
    trained = {"backbone." + k: v + 1 for k, v in encoder.cnn.backbone.state_dict().items()}
    trained["tokenizer.level_embed"] = torch.ones(3, 3)  # the v1 detector's other parts: left out
    save_file(trained, str(tmp_path / "model.safetensors"))
    loaded, left = encoder.cnn.load_backbone(tmp_path)
    name = "backbone.resnet.embedder.embedder.convolution.weight"
    assert name in loaded and torch.equal(encoder.cnn.state_dict()[name], trained[name])
    assert "proj.0.weight" in left and torch.equal(encoder.cnn.state_dict()["proj.0.weight"], before["proj.0.weight"])
    with pytest.raises(CheckpointError, match=r"vision.init_backbone.*cannot be read"):
        encoder.cnn.load_backbone(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"set vision\.backbone"):
        VisionConfig(image_size=64, patch_size=16, init_backbone=str(tmp_path))


def test_the_paper_preset_has_clip_l_14_336_and_its_bridge_and_region_encoder_sizes():
    with torch.device("meta"):
        encoder = VisionEncoder(VisionConfig())
        bridge = Bridge(1024, 4096)
        region = RegionEncoder(1024, 4096, patch=14)
    assert sum(p.numel() for p in encoder.parameters()) == 303_507_456  # CLIP ViT-L/14-336's vision tower
    assert VisionConfig().grid ** 2 == 576
    assert sum(p.numel() for p in bridge.parameters()) == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert region.mask_stack[0].kernel_size == (7, 7) and region.mask_stack[0].stride == (7, 7)
    assert region.mask_stack[3].kernel_size == (2, 2) and region.mask_stack[6].out_channels == 1024


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"image_size": 100}, "multiple of"),
        ({"feature_layer": 0}, "counts from the end"),
        ({"region_levels": 0}, "at least 1"),
    ],
)
def test_impossible_vision_configs_are_refused(fields, words):
    with pytest.raises(ConfigError, match=words):
        VisionConfig(**fields)
