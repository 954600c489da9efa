"""Several answers on one image in one sequence: each branch must see exactly what a single instruction sees."""

import pytest
import torch

from visionllm.formats.codec import OutputFormat
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.common.sequence import IGNORE, SEQUENCE, SLOT
from visionllm.models.v1.batch import Example, collate

QUESTIONS = ["What color is the circle?", "How many stars are there in the picture?", "Is there a red square?"]
ANSWERS = ["red", "2", "no"]


def _vqa(model, image, template: int, branches: bool) -> list[Example]:
    texts = [build_instruction(Task.VQA, question=q, template=template).text for q in QUESTIONS]
    pixels = model.processor.image(image)
    if branches:
        more = tuple(zip(texts[1:], ANSWERS[1:], strict=True))
        return [Example(pixels, texts[0], Task.VQA, OutputFormat.text(), answer=ANSWERS[0], branches=more)]
    return [Example(pixels, t, Task.VQA, OutputFormat.text(), answer=a) for t, a in zip(texts, ANSWERS, strict=True)]


def test_each_branch_sees_what_its_question_alone_sees(micro_model, images):
    model = micro_model.eval()
    packed = collate(_vqa(model, images[0], 0, branches=True), model.processor)
    single = collate(_vqa(model, images[0], 0, branches=False), model.processor)
    shared = int((packed.kinds[0] == SEQUENCE).sum())
    assert shared > model.config.tokenizer.num_queries  # the image tokens are in the shared prefix
    assert set(packed.groups[0, packed.kinds[0] == SLOT].tolist()) == {0, 1, 2}
    assert packed.input_ids.shape[1] < single.input_ids.shape[1] * 3
    torch.manual_seed(0)
    image_tokens = torch.randn(1, model.config.tokenizer.num_queries, model.decoder.hidden_size)
    with torch.no_grad():
        hidden_packed = model.sequence_hidden(packed, image_tokens, [None])
        hidden_single = model.sequence_hidden(single, image_tokens.expand(3, -1, -1), [None] * 3)
        for g in range(3):
            # The positions that predict a label: the one before each labelled position, inside branch g.
            in_branch = (packed.groups[0] == g) & (packed.labels[0] != IGNORE)
            before = in_branch.nonzero().squeeze(1) - 1
            alone = (single.labels[g] != IGNORE).nonzero().squeeze(1) - 1
            assert packed.labels[0, before + 1].tolist() == single.labels[g, alone + 1].tolist()
            torch.testing.assert_close(hidden_packed[0, before], hidden_single[g, alone], atol=1e-4, rtol=1e-4)
        # The text loss counts each branch as one answer, as the three single sequences count as three.
        torch.testing.assert_close(
            model._text_loss(hidden_packed, packed.labels, packed.groups),
            model._text_loss(hidden_single, single.labels, single.groups),
        )


def test_branches_must_share_the_image(micro_model, images):
    question_first = 5  # "{question} Answer using the image <image>."
    assert build_instruction(Task.VQA, question="q", template=question_first).text.startswith("q")
    with pytest.raises(ValueError, match="share the instruction up to and including the image"):
        collate(_vqa(micro_model, images[0], question_first, branches=True), micro_model.processor)


def test_a_packed_batch_trains(micro_model, images):
    model = micro_model.train()
    batch = collate(_vqa(model, images[0], 2, branches=True) * 2, model.processor)
    losses = model(batch)
    assert torch.isfinite(losses["text"]) and losses["text"] > 0
    losses["loss"].backward()
    assert model.decoder.image_proj[0].weight.grad.abs().sum() > 0
    model.zero_grad()
    model.eval()
