import torch

from visionllm.models.common.detr_loss import matched_set_loss


def test_batched_set_loss_is_the_sum_of_per_image_losses():
    """The loss is normalised by the batch's target count; unnormalised, it adds up image by image."""
    torch.manual_seed(0)
    counts = (3, 0, 1, 4, 2)
    logits = torch.randn(len(counts), 12, 4)
    valid = torch.rand(len(counts), 4) > 0.2
    boxes = torch.rand(len(counts), 12, 4) * 0.5 + 0.2
    targets = [torch.rand(n, 4) * 0.5 + 0.2 for n in counts]
    classes = [torch.randint(0, 4, (n,)) for n in counts]
    weights = (2.0, 5.0, 2.0)
    batched = matched_set_loss(logits, valid, boxes, targets, classes, *weights)[0] * sum(counts)
    alone = sum(
        matched_set_loss(logits[b : b + 1], valid[b : b + 1], boxes[b : b + 1], [targets[b]], [classes[b]], *weights)[0]
        * max(1, counts[b])
        for b in range(len(counts))
    )
    torch.testing.assert_close(batched, alone)


def test_set_loss_without_targets_pushes_every_score_down():
    logits = torch.zeros(2, 5, 3, requires_grad=True)
    loss = matched_set_loss(logits, torch.ones(2, 3, dtype=torch.bool), torch.rand(2, 5, 4), [torch.zeros(0, 4)] * 2,
                              [torch.zeros(0, dtype=torch.long)] * 2, 2.0, 5.0, 2.0)[0]  # fmt: skip
    loss.backward()
    assert loss > 0 and (logits.grad > 0).all()
