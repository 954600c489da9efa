"""Text answers must come from the image: the model's own class set, its evidence in words, and a control.

A micro model trained briefly on "What color is the square?" must answer from the picture: its answers follow
the image when the images are swapped among the questions.
"""

import random

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
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.v1.batch import Example, collate
from visionllm.models.v1.model import VisionLLM

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
DEFAULT_CLASSES = [f"{colour} square" for colour in COLOURS]


def seeing_config() -> VisionLLMConfig:
    return VisionLLMConfig(
        image_size=64,
        backbone=BackboneConfig(
            embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic"
        ),
        text_encoder=TextEncoderConfig(
            pretrained=None, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
        ),
        tokenizer=TokenizerConfig(
            d_model=64, num_queries=6, encoder_layers=1, decoder_layers=2, num_heads=4, ffn_dim=128, fusion_heads=4,
            default_classes=DEFAULT_CLASSES,
        ),
        llm=LLMConfig(
            hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=192, tie_embeddings=True,
            vocab_size=400,
        ),
        decoder=DecoderConfig(coord_range=32, max_points=20, max_classes=16, max_slot_tokens=60, max_new_tokens=4),
    )  # fmt: skip


def square_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """A 64 px grey image with one coloured square: pixels, its box (x1, y1, x2, y2) and its colour."""
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    side = int(rng.integers(16, 30))
    x, y = (int(v) for v in rng.integers(0, 64 - side, size=2))
    pixels = np.full((64, 64, 3), 128, dtype=np.uint8)
    pixels[y : y + side, x : x + side] = COLOURS[colour]
    return pixels, np.array([[x, y, x + side, y + side]], dtype=np.float64), colour


@pytest.fixture(scope="module")
def seeing_model() -> VisionLLM:
    torch.manual_seed(0)
    return VisionLLM(seeing_config())


def test_the_llm_vocabulary_is_built_from_the_instruction_language(seeing_model):
    tokenizer = seeing_model.processor.tokenizer
    assert len(tokenizer) < 1000
    for word in ("circle", "hexagon", "color", "leftmost", "caption"):
        assert tokenizer.tokenize(word) == [word]
    # Words outside it still encode, as characters, never as [UNK]; codec tokens stay whole.
    assert tokenizer.tokenize("Zebra") == ["z", "##e", "##b", "##r", "##a"]
    assert tokenizer.tokenize('{"red circle": <c3>}') == ["{", '"', "red", "circle", '"', ":", "<c3>", "}"]


def test_captions_read_the_default_classes_in_words(seeing_model):
    model = seeing_model
    decoder, table = model.decoder, model.decoder.backbone_lm.get_input_embeddings().weight
    rows = decoder.class_rows(4, torch.tensor([True, False]))
    red, square = (model.processor.tokenizer.convert_tokens_to_ids(w) for w in ("red", "square"))
    torch.testing.assert_close(rows[0, :4], table[decoder.class_ids[:4]])
    torch.testing.assert_close(rows[1, 0], (table[red] + table[square]) / 2)
    assert rows[1, 3].abs().sum() == 0  # a padded class has no words


def test_top1_evidence_keeps_only_each_tokens_best_default_class(seeing_model):
    model = seeing_model
    texts = [build_instruction(Task.CAPTION).text]
    encoder = model.processor.encoder_inputs(texts, [()])
    pixels = model.processor.image(square_scene(np.random.default_rng(1))[0]).pixels[None]
    decoder = model.config.decoder
    try:
        with torch.no_grad():
            decoder.default_evidence = "soft"
            _, soft = model.encode_images(pixels, encoder)
            decoder.default_evidence = "top1"
            tokens, top1 = model.encode_images(pixels, encoder)
    finally:
        decoder.default_evidence = "soft"
    assert not torch.allclose(soft, top1)
    # Rebuild top-1 evidence by hand: the token's best class's words, weighted by its probability.
    with torch.no_grad():
        rows = model.decoder.class_rows(tokens.class_logits.shape[-1], torch.tensor([False]))
        plain = model.decoder.embed_image_tokens(tokens.embeddings, tokens.boxes)
    evidence = top1 - plain
    norms = rows[0].norm(dim=-1)
    checked = 0
    for k in range(evidence.shape[1]):
        # the evidence is a multiple of one class row
        scale = evidence[0, k].norm()
        if scale < 1e-6:
            continue
        cosines = (rows[0] @ evidence[0, k]) / (norms * scale)
        assert np.isclose(float(cosines.max()), 1.0, atol=1e-4)
        checked += 1
    assert checked > 0


def _vqa_example(model: VisionLLM, pixels, box, colour, template: int) -> Example:
    instruction = build_instruction(Task.VQA, question="What color is the square?", template=template)
    return Example(
        model.processor.image(pixels), instruction.text, Task.VQA, instruction.output_format, answer=colour,
        token_boxes_xyxy_px=box, token_class_index=np.array([DEFAULT_CLASSES.index(f"{colour} square")]),
    )  # fmt: skip


@pytest.mark.slow
def test_answers_change_when_the_images_are_swapped(seeing_model):
    model = seeing_model
    torch.manual_seed(0)
    random.seed(0)
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    model.train()
    for step in range(160):
        examples = [_vqa_example(model, *square_scene(rng), template=(step + i) % 10) for i in range(8)]
        losses = model(collate(examples, model.processor))
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    scenes = [square_scene(np.random.default_rng(1000 + i)) for i in range(24)]
    question = build_instruction(Task.VQA, question="What color is the square?")
    answers = [a.prediction.text for a in model.predict([s[0] for s in scenes], [question] * len(scenes))]
    # Each question gets the image of the next scene of another colour.
    swapped_index = [
        next(j for j in range(i + 1, i + 24) if scenes[j % 24][2] != s[2]) % 24 for i, s in enumerate(scenes)
    ]
    swapped = [a.prediction.text for a in model.predict([scenes[j][0] for j in swapped_index], [question] * 24)]
    accuracy = np.mean([a == s[2] for a, s in zip(answers, scenes, strict=True)])
    changed = np.mean([a != b for a, b in zip(answers, swapped, strict=True)])
    blind = np.mean([b == s[2] for b, s in zip(swapped, scenes, strict=True)])
    assert accuracy >= 0.8, (accuracy, answers)
    assert changed >= 0.7, (changed, answers, swapped)
    assert blind <= 0.3, blind
