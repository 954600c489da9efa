"""Patch labels: what covers each patch, from the instance annotations, and a loss that reaches the vision encoder."""

import numpy as np
import pytest
import torch

from visionllm.config import ConfigError
from visionllm.data.sample import ObjectAnnotation
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.model import VisionLLMv2
from visionllm.models.v2.patch_labels import PatchLabelConfig, PatchLabelHead, patch_targets
from visionllm.train.mix import MixConfig

CONFIG = PatchLabelConfig(categories=["circle", "square"], colors=["red", "blue"])


def square(x1, y1, x2, y2, category="square", color="blue"):
    mask = np.zeros((32, 32), bool)
    mask[y1:y2, x1:x2] = True
    return ObjectAnnotation((x1, y1, x2, y2), category, attributes={"color": color}), mask


def test_targets_hold_each_patch_s_shares_and_the_object_centres():
    targets = patch_targets(CONFIG, [square(0, 0, 16, 8), square(16, 16, 32, 32, "circle", "red")], (32, 32), 4)
    assert targets.shape == (CONFIG.channels, 4, 4) == (7, 4, 4)
    categories, colors, centres = targets[:3], targets[3:6], targets[6]
    assert torch.allclose(categories.sum(0), torch.ones(4, 4)) and torch.allclose(colors.sum(0), torch.ones(4, 4))
    assert categories[2, 0, 0] == 1 and categories[2, 0, 1] == 1 and categories[0, 1, 0] == 1  # square, background
    assert categories[1, 3, 3] == 1 and colors[1, 3, 3] == 1 and colors[2, 0, 0] == 1  # red circle, blue square
    assert centres.nonzero().tolist() == [[0, 1], [3, 3]]  # box centres (8, 4) and (24, 24)


def test_a_category_or_colour_not_listed_counts_as_background():
    targets = patch_targets(CONFIG, [square(0, 0, 8, 8, "star", "green")], (32, 32), 4)
    assert targets[0, 0, 0] == 1 and targets[3, 0, 0] == 1 and targets[6, 0, 0] == 1


def test_the_loss_is_lower_for_the_right_targets_after_fitting():
    torch.manual_seed(0)
    head = PatchLabelHead(CONFIG, 16)
    tokens = torch.randn(2, 16, 16)
    right = torch.stack([patch_targets(CONFIG, [square(0, 0, 16, 16)], (32, 32), 4)] * 2)
    wrong = torch.stack([patch_targets(CONFIG, [square(16, 16, 32, 32, "circle", "red")], (32, 32), 4)] * 2)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        head.loss(tokens, right).backward()
        optimizer.step()
    assert head.loss(tokens, right) < 0.5 * head.loss(tokens, wrong)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="categories"):
        PatchLabelConfig(categories=[])
    with pytest.raises(ConfigError, match="weight"):
        PatchLabelConfig(categories=["circle"], weight=-1.0)


def test_the_training_stream_carries_patch_labels_and_the_loss_reaches_the_encoder(micro_v2, tiny_shapesworld):
    micro_v2["patch_labels"] = {"categories": ["circle", "square", "person"], "colors": ["red", "green"]}
    micro_v2["objects"] = micro_v2["keypoints"] = None
    torch.manual_seed(0)
    model = VisionLLMv2(VisionLLMv2Config.from_dict(micro_v2))
    stream = model.training_stream(tiny_shapesworld.root, "train", MixConfig(tasks={"vqa": 1.0, "caption": 1.0}))
    batch = model.collate([stream[i] for i in range(3)])
    grid = model.config.vision.grid
    assert batch.patches.shape == (3, 4 + 3 + 1, grid, grid)
    assert (batch.patches[:, :4].sum(1) - 1).abs().max() < 1e-5  # every patch's category shares add up to 1
    out = model(batch)
    assert out["patches"] > 0 and torch.isclose(out["loss"], out["text"] + out["patches"])
    model.zero_grad()
    model.patch_labels.loss(model.vision(batch.pixel_values)[0], batch.patches).backward()
    [patches] = [p for name, p in model.vision.named_parameters() if name.endswith("patch_embedding.weight")]
    assert patches.grad is not None and patches.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.llm.parameters())


def test_a_stream_without_patch_labels_leaves_them_out(micro_v2, tiny_shapesworld):
    micro_v2["objects"] = micro_v2["keypoints"] = None
    model = VisionLLMv2(VisionLLMv2Config.from_dict(micro_v2))
    stream = model.training_stream(tiny_shapesworld.root, "train", MixConfig(tasks={"caption": 1.0}))
    batch = model.collate([stream[0], stream[1]])
    assert batch.patches is None and model.patch_labels is None and "patches" not in model(batch)
