"""v2's object and keypoint decoders at toy size: any number of routed categories per image, boxes, classes and
masks with their losses, keypoints for any skeleton, and the losses reaching the LLM's query states."""

import pytest
import torch

from visionllm.models.v2.keypoint_decoder import KeypointDecoder
from visionllm.models.v2.object_decoder import ObjectDecoder, ObjectTargets

WIDTH = 24  # the LLM width the conditions come in


@pytest.fixture
def decoder(micro_objects):
    torch.manual_seed(0)
    return ObjectDecoder(micro_objects, WIDTH)


def conditions(counts, requires_grad=False):
    return [[torch.randn(4, WIDTH, requires_grad=requires_grad) for _ in range(n)] for n in counts]


def targets():
    masks = torch.zeros(2, 64, 64)
    masks[0, 10:30, 10:30] = 1
    masks[1, 40:60, 5:25] = 1
    return [
        ObjectTargets(torch.tensor([[0.3, 0.3, 0.3, 0.3]]), torch.tensor([0]), masks[:1]),
        ObjectTargets(torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.25, 0.8, 0.3, 0.3]]), torch.tensor([2, 0]), masks),
    ]


def test_each_image_gets_its_own_number_of_routed_categories(decoder):
    out = decoder(torch.randn(2, 3, 64, 64), conditions([1, 3]))
    assert out.class_logits.shape == (2, 10, 3) and out.boxes.shape == (2, 10, 4)
    assert out.valid.tolist() == [[True, False, False], [True, True, True]]
    assert (out.class_logits[0, :, 1:] < -1e3).all()  # categories the first image did not route
    assert out.mask_logits.shape == (2, 10, 16, 16)  # stride 4
    assert ((out.boxes >= 0) & (out.boxes <= 1)).all()


def test_the_losses_train_the_backbone_the_masks_and_the_conditions(decoder):
    states = conditions([1, 3], requires_grad=True)
    out = decoder(torch.randn(2, 3, 64, 64), states)
    losses, (image, _, cols) = decoder.loss(out, targets())
    assert set(losses) == {"boxes", "masks"} and all(torch.isfinite(v) and v > 0 for v in losses.values())
    matched = sorted(zip(image.tolist(), cols.tolist(), strict=True))
    assert matched == [(0, 0), (1, 0), (1, 1)]  # every target matched once
    sum(losses.values()).backward()
    assert states[1][2].grad.abs().sum() > 0  # the routed category that has an object
    assert decoder.backbone.resnet.embedder.embedder.convolution.weight.grad.abs().sum() > 0
    assert decoder.masks.query[0].weight.grad.abs().sum() > 0


def test_an_image_without_routed_categories_is_refused(decoder):
    with pytest.raises(ValueError, match="at least one routed category"):
        decoder(torch.randn(2, 3, 64, 64), conditions([1, 0]))


def test_detections_come_in_pixels_of_each_image_best_first(decoder):
    out = decoder.eval()(torch.randn(2, 3, 64, 64), conditions([2, 1]))
    found = [decoder.detect(out, 0, (200, 100), top_k=5), decoder.detect(out, 1, (64, 64), top_k=5)]
    first = found[0]
    assert first.boxes.shape == (5, 4) and first.masks.shape == (5, 100, 200)
    assert (first.scores[:-1] >= first.scores[1:]).all()
    assert (first.boxes[:, [0, 2]] <= 200).all() and (first.boxes[:, [1, 3]] <= 100).all()
    assert set(found[1].categories.tolist()) == {0}  # the second image routed one category


def test_keypoints_follow_the_routed_names_of_any_skeleton(decoder, micro_keypoints):
    torch.manual_seed(0)
    points = KeypointDecoder(micro_keypoints, WIDTH, decoder.config.d_model, 3)
    out = decoder(torch.randn(2, 3, 64, 64), conditions([1, 1]))
    names = conditions([17, 5], requires_grad=True)  # a person's 17 points, a star's 5 tips
    image, query = torch.tensor([0, 1, 1]), torch.tensor([3, 0, 7])
    layers = points(out, image, query, names)
    assert len(layers) == 1 + micro_keypoints.decoder_layers and layers[-1].shape == (3, 17, 2)
    wanted = torch.rand(3, 17, 3)
    wanted[..., 2] = 2.0
    wanted[1:, 5:, 2] = 0.0  # the stars have 5 points
    loss = points.loss(layers, wanted)
    moved = wanted.clone()
    moved[1:, 5:, :2] += 0.3  # points that are not labelled do not count
    assert torch.allclose(points.loss(layers, moved), loss)
    loss.backward()
    assert names[1][4].grad.abs().sum() > 0 and names[1][0].grad.abs().sum() > 0
    assert points.point_head[-1].layers[-1].weight.grad.abs().sum() > 0


def test_a_decoder_starts_from_a_trained_v1_detector_where_names_and_shapes_match(decoder, micro_objects, tmp_path):
    """A v1 checkpoint names its backbone `backbone.*` and its image tokenizer `tokenizer.*` (class projections:
    `class_head`); what fits starts the decoder, the rest (its category pooling, masks) stays as it was."""
    from safetensors.torch import save_file

    from visionllm.models.common.checkpoint import CheckpointError

    trained = {}
    for name, tensor in decoder.state_dict().items():
        if name.startswith("backbone."):
            trained[name] = tensor + 1
        elif name.startswith("class_proj."):
            trained["tokenizer.class_head." + name.removeprefix("class_proj.")] = tensor + 1
        elif not name.startswith(("categories.", "masks.")):
            trained["tokenizer." + name] = tensor + 1
    trained["tokenizer.text_proj.weight"] = torch.ones(3, 5)  # v1 only: left out
    trained["tokenizer.level_embed"] = torch.ones(7, 7)  # another shape: left out
    save_file({k: v.contiguous() for k, v in trained.items()}, str(tmp_path / "model.safetensors"))
    fresh = ObjectDecoder(micro_objects, WIDTH)
    before = fresh.state_dict()
    loaded, left = fresh.load_detector(tmp_path)
    after = fresh.state_dict()
    assert "backbone.resnet.embedder.embedder.convolution.weight" in loaded and "class_proj.0.weight" in loaded
    assert "level_embed" in left and all(n.startswith(("categories.", "masks.", "level_embed")) for n in left)
    assert torch.equal(after["class_proj.0.weight"], decoder.state_dict()["class_proj.0.weight"] + 1)
    assert torch.equal(after["categories.pool.mlp.0.weight"], before["categories.pool.mlp.0.weight"])
    with pytest.raises(CheckpointError, match=r"init_detector.*cannot be read"):
        fresh.load_detector(tmp_path / "nowhere")
    save_file({"tokenizer.text_proj.weight": torch.ones(3, 5)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"nothing in .* fits"):
        fresh.load_detector(tmp_path)
