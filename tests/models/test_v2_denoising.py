"""Contrastive denoising queries: positives jittered less than negatives, run beside the matching queries without
changing them, with a loss that trains the decoder; none at inference."""

import dataclasses

import pytest
import torch

from visionllm.config import ConfigError
from visionllm.models.v2.denoising import denoising_loss, denoising_queries
from visionllm.models.v2.object_decoder import ObjectDecoder, ObjectTargets
from visionllm.ops.tensor_boxes import cxcywh_to_xyxy, elementwise_generalized_iou

WIDTH = 24


def iou(a, b):
    return elementwise_generalized_iou(cxcywh_to_xyxy(a), cxcywh_to_xyxy(b))


def test_positives_stay_closer_to_their_box_than_negatives():
    torch.manual_seed(0)
    box = torch.tensor([[0.5, 0.5, 0.4, 0.3]]).repeat(50, 1)
    queries = denoising_queries([box], [torch.zeros(50, dtype=torch.long)], [1], 2, 0.4, 0.5)
    assert queries.reference.shape == (2, 100, 4) and queries.rows.tolist() == [0, 0]
    positive = queries.positive[0]
    overlap = iou(queries.reference[0], queries.target_boxes[0])
    assert (
        overlap[positive].min() > overlap[~positive].max() - 0.2
        and overlap[positive].mean() > overlap[~positive].mean()
    )
    assert (queries.classes == 0).all()  # one routed category: nothing to swap it for
    assert queries.target_boxes[0].tolist() == box.repeat(2, 1).tolist()


def test_rows_are_padded_and_images_without_objects_get_none():
    boxes = [torch.rand(3, 4) * 0.5 + 0.2, torch.zeros(0, 4), torch.rand(1, 4) * 0.5 + 0.2]
    classes = [torch.tensor([0, 1, 1]), torch.zeros(0, dtype=torch.long), torch.tensor([0])]
    queries = denoising_queries(boxes, classes, [2, 1, 1], 2, 0.4, 0.2)
    assert queries.rows.tolist() == [0, 0, 2, 2] and queries.reference.shape == (4, 6, 4)
    assert queries.real.sum(1).tolist() == [6, 6, 2, 2] and queries.positive.sum(1).tolist() == [3, 3, 1, 1]
    assert denoising_queries([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], [1], 2, 0.4, 0.2) is None


@pytest.fixture
def decoder(micro_objects):
    torch.manual_seed(0)
    return ObjectDecoder(dataclasses.replace(micro_objects, denoising_groups=2), WIDTH).train()


def test_denoising_trains_beside_the_matching_queries_without_changing_them(decoder):
    pixels = torch.randn(2, 3, 64, 64)
    states = [[torch.randn(4, WIDTH)], [torch.randn(4, WIDTH), torch.randn(4, WIDTH)]]
    targets = [
        ObjectTargets(torch.tensor([[0.3, 0.3, 0.3, 0.3]]), torch.tensor([0])),
        ObjectTargets(torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.6, 0.7, 0.3, 0.2]]), torch.tensor([1, 0])),
    ]
    plain = decoder(pixels, states)
    out = decoder(pixels, states, targets)
    assert plain.denoising is None and torch.allclose(out.boxes, plain.boxes, atol=1e-6)
    queries, logits, boxes = out.denoising
    assert queries.rows.tolist() == [0, 0, 1, 1] and logits[-1].shape == (4, 4, 2) and boxes[-1].shape == (4, 4, 4)
    losses, _ = decoder.loss(out, targets)
    assert losses["denoising"] > 0
    losses["denoising"].backward()
    assert (
        decoder.label_embed.weight.grad.abs().sum() > 0 and decoder.box_head[0].layers[-1].weight.grad.abs().sum() > 0
    )
    assert decoder.eval()(pixels, states, targets).denoising is None  # inference never builds them


def test_the_denoising_loss_is_lowest_for_predictions_that_recover_the_boxes():
    torch.manual_seed(1)
    queries = denoising_queries([torch.tensor([[0.4, 0.4, 0.2, 0.2]])], [torch.tensor([1])], [2], 1, 0.4, 0.0)
    valid = torch.ones(1, 2, dtype=torch.bool)
    right_logits = torch.full((1, 2, 2), -6.0)
    right_logits[0, 0, 1] = 6.0
    right = denoising_loss([right_logits], [queries.target_boxes], queries, valid, 2.0, 5.0, 2.0)
    wrong = denoising_loss([-right_logits], [queries.reference.flip(1)], queries, valid, 2.0, 5.0, 2.0)
    assert right < 0.05 < wrong


def test_bad_denoising_settings_are_refused(micro_objects):
    with pytest.raises(ConfigError, match="denoising"):
        dataclasses.replace(micro_objects, denoising_groups=-1)
    with pytest.raises(ConfigError, match="box_noise"):
        dataclasses.replace(micro_objects, box_noise=0.0)
