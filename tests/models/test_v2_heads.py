"""The object decoder's links to the LLM: categories from routed query states, classification against them, masks
at stride 4, and the mask losses."""

import torch

from visionllm.models.common.detr_loss import mask_losses
from visionllm.models.v2.heads import SEPARATION_MARGIN, CategoryHead, MaskHead, phrase_separation, upsample_masks


def test_categories_come_from_their_routed_queries_and_classify_object_queries():
    torch.manual_seed(0)
    head = CategoryHead(llm_width=12, dim=8)
    red, star = torch.randn(4, 12), torch.randn(4, 12)
    features, valid = head.categories([[red, star], [star]])
    assert features.shape == (2, 2, 8) and valid.tolist() == [[True, True], [True, False]]
    assert torch.allclose(features[0, 1], features[1, 0])  # the same query states give the same category
    assert torch.allclose(features[0, 0], head.pool.mlp(red).mean(0))
    queries = torch.randn(2, 5, 8)
    logits = head.logits(queries, features, valid)
    assert logits.shape == (2, 5, 2) and (logits[1, :, 1] == -1e4).all()
    assert torch.allclose(logits[0, :, 0], queries[0] @ features[0, 0] / 8**0.5 + head.bias)
    logits[:, :, :1].sum().backward()
    assert head.pool.mlp[0].weight.grad.abs().sum() > 0
    empty, none = head.categories([[], []])
    assert empty.shape == (2, 1, 8) and not none.any()


def test_phrase_separation_penalises_different_phrases_that_share_a_feature():
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert phrase_separation(same, ["circle", "circle", "star"]) == 0  # one phrase twice, the other orthogonal
    collapsed = phrase_separation(same, ["circle", "square", "star"])  # circle and square share their feature
    pairs = 6  # ordered pairs of different phrases: (0, 1), (1, 0) are at cosine 1, the other four at 0
    assert torch.isclose(collapsed, torch.tensor(2 * (1 - SEPARATION_MARGIN) ** 2 / pairs))
    assert phrase_separation(same[:2], ["circle", "circle"]) == 0  # no pair of different phrases
    features = torch.tensor([[1.0, 0.1], [1.0, -0.1]], requires_grad=True)
    phrase_separation(features, [("red", "circle"), ("square",)]).backward()
    assert features.grad[0, 1] < 0 < features.grad[1, 1]  # the gradient pushes the two apart


def test_masks_are_query_embeddings_against_pixel_features():
    torch.manual_seed(0)
    head = MaskHead(dim=16, in_channels=6)
    masks = head(torch.randn(2, 3, 16), torch.randn(2, 6, 8, 10))
    assert masks.shape == (2, 3, 8, 10)
    assert upsample_masks(masks, (32, 40)).shape == (2, 3, 32, 40)


def test_mask_losses_reward_the_right_mask():
    target = torch.zeros(2, 8, 8)
    target[0, :4] = 1
    target[1, :, :2] = 1
    right_bce, right_dice = mask_losses((target * 2 - 1) * 10, target)
    wrong_bce, wrong_dice = mask_losses((1 - target * 2) * 10, target)
    assert right_bce < 0.01 and right_dice < 0.01 and wrong_bce > 5 and wrong_dice > 0.9
    assert mask_losses(torch.zeros(0, 8, 8), torch.zeros(0, 8, 8)) == (0, 0)
