"""End to end: the whole model overfits 8 ShapesWorld images until detection AP50 on them >= 0.9."""

import json
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
from visionllm.data.shapes import language as lang
from visionllm.data.shapes.dataset import generate_shapesworld
from visionllm.data.shapes.load import load_split
from visionllm.data.shapes.scene import SHAPES, ShapesWorldConfig
from visionllm.eval.runner import evaluate_coco
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.v1.batch import Example, collate
from visionllm.models.v1.model import VisionLLM

CLASSES = [*SHAPES, "person"]


def small_config() -> VisionLLMConfig:
    return VisionLLMConfig(
        image_size=64,
        backbone=BackboneConfig(
            embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic"
        ),
        text_encoder=TextEncoderConfig(
            pretrained=None, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
        ),
        tokenizer=TokenizerConfig(
            d_model=64, num_queries=10, encoder_layers=1, decoder_layers=2, num_heads=4, ffn_dim=128, fusion_heads=4
        ),
        llm=LLMConfig(
            hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=256, tie_embeddings=True
        ),
        decoder=DecoderConfig(coord_range=32, max_points=20, max_classes=16, max_slot_tokens=60),
    )


@pytest.mark.slow
def test_overfits_eight_images(tmp_path):
    torch.manual_seed(0)
    random.seed(0)
    layout = generate_shapesworld(
        tmp_path / "w", train=8, val=0, config=ShapesWorldConfig(image_size=64, max_objects=4), seed=3, progress=False
    )
    model = VisionLLM(small_config())
    instruction = build_instruction(Task.DETECTION, classes=CLASSES, config=model.config.codec())
    samples = load_split(layout.root, "train", Task.DETECTION)
    examples = []
    for s in samples:
        boxes = np.array([o.box_xyxy_px for o in s.objects]).reshape(-1, 4)
        examples.append(
            Example(
                model.processor.image(s.image_path), instruction.text, Task.DETECTION, instruction.output_format,
                instruction.class_names, class_index=np.array([CLASSES.index(o.category) for o in s.objects]),
                points_xy_px=boxes.reshape(-1, 2, 2), visible=np.ones((len(boxes), 2), bool), token_boxes_xyxy_px=boxes,
            )
        )  # fmt: skip
    batch = collate(examples, model.processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    gt = lang.coco_phrase_view(json.loads(layout.instances("train").read_text()), CLASSES)
    ap50 = 0.0
    model.train()
    for step in range(1, 501):
        losses = model(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step >= 150 and step % 50 == 0:
            ap50 = evaluate_coco(model, None, layout.image_dir("train"), "detect", progress=False, ground_truth=gt)[
                "AP50"
            ]
            model.train()
            if ap50 >= 0.9:
                break
    assert ap50 >= 0.9, f"AP50 {ap50:.3f} after {step} steps"
