import torch

from visionllm.models.v1.tokenizer import TokenizerOutput, arrange_tokens


def _output(boxes, logits) -> TokenizerOutput:
    boxes, logits = torch.tensor([boxes]), torch.tensor([logits])
    m = boxes.shape[1]
    return TokenizerOutput(
        embeddings=torch.arange(m, dtype=torch.float32).view(1, m, 1),
        boxes=boxes,
        logits=logits.max(-1).values,
        class_logits=logits,
        valid=torch.ones(1, logits.shape[-1], dtype=torch.bool),
        layer_logits=[logits],
        layer_boxes=[boxes],
    )


def test_tokens_are_read_left_to_right_objects_first_and_duplicates_silenced():
    # cx cy w h: an object on the right, its duplicate, an object on the left, background in the middle.
    boxes = [[0.8, 0.5, 0.2, 0.2], [0.8, 0.5, 0.2, 0.19], [0.2, 0.5, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]]
    logits = [[4.0, -9.0], [3.0, -9.0], [-9.0, 4.0], [-9.0, -9.0]]
    arranged, probs = arrange_tokens(_output(boxes, logits), duplicate_iou=0.7)
    # Reading order: the left object (2), the right object (0), then the rest left to right: background (3),
    # the silenced duplicate (1).
    assert arranged.embeddings[0, :, 0].tolist() == [2, 0, 3, 1]
    torch.testing.assert_close(arranged.boxes[0, :, 0], torch.tensor([0.2, 0.8, 0.5, 0.8]))
    assert probs[0, 0, 1] > 0.9 and probs[0, 1, 0] > 0.9
    assert probs[0, 3].abs().sum() == 0  # the duplicate reads as nothing
    assert probs[0, 2].max() < 0.01


def test_arranged_probabilities_keep_their_gradient():
    output = _output([[0.2, 0.5, 0.2, 0.2], [0.7, 0.5, 0.2, 0.2]], [[1.0], [2.0]])
    output.class_logits.requires_grad_(True)
    _, probs = arrange_tokens(output, duplicate_iou=0.7)
    probs.sum().backward()
    assert (output.class_logits.grad > 0).all()
