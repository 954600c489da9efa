import json

import numpy as np
import pytest
import torch

from visionllm.formats.results import Detections, TextAnswer
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.common.checkpoint import CheckpointError
from visionllm.models.common.inputs import ProcessorError
from visionllm.models.common.llm import PlaceholderMismatch
from visionllm.models.common.sequence import PAD, SEQUENCE, SLOT, block_mask
from visionllm.models.v1.batch import Example, collate
from visionllm.models.v1.decoder import select_anchor_tokens
from visionllm.models.v1.model import VisionLLM


def examples(model: VisionLLM, images) -> list[Example]:
    codec = model.config.codec()
    proc = model.processor
    det = build_instruction(Task.DETECTION, classes=["red circle", "star"], config=codec)
    seg = build_instruction(Task.INSTANCE_SEGMENTATION, classes=["square"], num_points=4, config=codec)
    kpt = build_instruction(Task.KEYPOINTS, config=codec)
    cap = build_instruction(Task.CAPTION)
    boxes = np.array([[4.0, 4.0, 30.0, 20.0], [32.0, 10.0, 60.0, 40.0]])
    return [
        Example(proc.image(images[0]), det.text, Task.DETECTION, det.output_format, det.class_names,
                class_index=np.array([0, 1]), points_xy_px=boxes.reshape(2, 2, 2), visible=np.ones((2, 2), bool),
                token_boxes_xyxy_px=boxes),
        Example(proc.image(images[1]), seg.text, Task.INSTANCE_SEGMENTATION, seg.output_format, seg.class_names,
                class_index=np.array([0]), points_xy_px=np.array([[[5, 5], [20, 5], [20, 20], [5, 20]]], float),
                visible=np.ones((1, 4), bool), token_boxes_xyxy_px=np.array([[5.0, 5.0, 20.0, 20.0]])),
        Example(proc.image(images[2]), kpt.text, Task.KEYPOINTS, kpt.output_format, kpt.class_names,
                class_index=np.array([0]), points_xy_px=np.random.default_rng(0).random((1, 17, 2)) * 40,
                visible=np.arange(17)[None] % 3 > 0, token_boxes_xyxy_px=np.array([[0.0, 0.0, 40.0, 40.0]])),
        Example(proc.image(images[0]), cap.text, Task.CAPTION, cap.output_format, answer="a red circle",
                token_boxes_xyxy_px=boxes),
    ]  # fmt: skip


def test_every_part_runs_forward_and_backward(micro_model, images):
    model = micro_model
    model.train()
    batch = collate(examples(model, images), model.processor)
    features = model.backbone(batch.pixel_values)
    assert [f.shape[-1] for f in features] == [8, 4, 2]  # strides 8, 16, 32 of 64 px
    losses = model(batch)
    for name in ("loss", "tokenizer", "text", "slots"):
        assert torch.isfinite(losses[name]) and losses[name] > 0, name
    model.zero_grad()
    losses["loss"].backward()
    for part in (model.backbone, model.text_encoder, model.tokenizer, model.decoder.lm, model.decoder.image_proj):
        grads = [p.grad for p in part.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), type(part).__name__
        assert any(g.abs().sum() > 0 for g in grads), type(part).__name__
    model.zero_grad()
    model.eval()


def test_image_tokens_are_scattered_into_placeholders_and_counts_must_match(micro_model):
    decoder = micro_model.decoder
    m = micro_model.config.tokenizer.num_queries
    ids = torch.tensor([micro_model.processor.prefix_ids("look at <image> now")])
    tokens = torch.randn(1, m, decoder.hidden_size)
    embeds = decoder.input_embeddings(ids, tokens)
    where = (ids[0] == decoder.image_id).nonzero().squeeze(1)
    assert len(where) == m
    torch.testing.assert_close(embeds[0, where], tokens[0])
    with pytest.raises(PlaceholderMismatch, match="placeholders"):
        decoder.input_embeddings(ids, torch.randn(1, m - 1, decoder.hidden_size))
    with pytest.raises(ProcessorError, match="exactly once"):
        micro_model.processor.prefix_ids("no image here")


def test_block_mask_rules():
    kinds = torch.tensor([[SEQUENCE, SEQUENCE, SLOT, SLOT, SLOT, SLOT, PAD]])
    groups = torch.tensor([[-1, -1, 0, 0, 1, 1, -1]])
    allowed = block_mask(kinds, groups)[0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],  # slot 0 sees the prefix and itself
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # slot 1 never sees slot 0
        [1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],  # padding only sees itself
    ]


def test_parallel_slot_decoding_equals_decoding_each_slot_alone(micro_model, images):
    model = micro_model
    batch = collate(examples(model, images)[:1], model.processor)
    with torch.no_grad():
        tokens, image_tokens = model.encode_images(batch.pixel_values, batch.encoder_inputs())
        fmt = batch.formats[0]
        index = select_anchor_tokens(tokens.logits, model.processor.num_slots(fmt))[0]
        together = model.sequence_hidden(batch, image_tokens, [index])[0][batch.kinds[0] == SLOT]
        together = together.view(len(index), fmt.slot_length, -1)
        prefix = int((batch.kinds[0] == SEQUENCE).sum())
        keep = prefix + fmt.slot_length
        alone_batch = type(batch)(**{**batch.__dict__})
        for name in ("input_ids", "kinds", "groups", "slot_offsets", "labels"):
            setattr(alone_batch, name, getattr(batch, name)[:, :keep])
        for k in range(len(index)):
            alone = model.sequence_hidden(alone_batch, image_tokens, [index[k : k + 1]])[0, prefix:keep]
            torch.testing.assert_close(alone, together[k], atol=1e-4, rtol=1e-4)


def _requests(model):
    codec = model.config.codec()
    return [
        build_instruction(Task.DETECTION, classes=["red circle", "star"], config=codec),
        build_instruction(Task.CAPTION),
        build_instruction(Task.INSTANCE_SEGMENTATION, classes=["square"], num_points=4, config=codec),
        build_instruction(Task.VQA, question="How many stars are there?"),
        build_instruction(Task.GROUNDING, expression="the star", config=codec),
    ]


def _same(a, b):
    assert type(a.prediction) is type(b.prediction)
    if isinstance(a.prediction, TextAnswer):
        assert a.prediction.text == b.prediction.text
    else:
        assert a.prediction.class_names == b.prediction.class_names
        np.testing.assert_allclose(a.prediction.boxes_xyxy_px, b.prediction.boxes_xyxy_px, atol=1e-3)
        np.testing.assert_allclose(a.prediction.scores, b.prediction.scores, atol=1e-4)


def test_batched_mixed_task_predict_equals_one_at_a_time(micro_model, images):
    requests = _requests(micro_model)
    pictures = [images[i % 3] for i in range(len(requests))]
    together = micro_model.predict(pictures, requests, min_score=0.0)
    assert len(together) == len(requests)
    for image, request, result in zip(pictures, requests, together, strict=True):
        _same(micro_model.predict([image], [request], min_score=0.0)[0], result)
    det = together[0].prediction
    if isinstance(det, Detections) and len(det):
        h, w = images[0].shape[:2]
        assert (det.boxes_xyxy_px[:, [0, 2]] <= w).all() and (det.boxes_xyxy_px[:, [1, 3]] <= h).all()


def test_free_text_instructions_and_bad_inputs(micro_model, images):
    result = micro_model.predict([images[0]], ['Find {"star": <c0>} in <image>.'])[0]
    assert isinstance(result.prediction, Detections | TextAnswer)
    with pytest.raises(ValueError, match="2 images but 1"):
        micro_model.predict(images[:2], ["<image>"])
    with pytest.raises(ProcessorError, match="exactly once"):
        micro_model.predict([images[0]], ["no placeholder"])
    with pytest.raises(FileNotFoundError):
        micro_model.predict(["/no/such/image.png"], ["<image>"])


def test_save_then_load_gives_identical_outputs(micro_model, images, tmp_path):
    folder = micro_model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer"}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "visionllm-v1"
    loaded = VisionLLM.from_pretrained(folder)
    requests = _requests(micro_model)
    pictures = [images[i % 3] for i in range(len(requests))]
    for a, b in zip(micro_model.predict(pictures, requests, 0.0), loaded.predict(pictures, requests, 0.0), strict=True):
        _same(a, b)
    for name, tensor in micro_model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, msg=name)


def test_loading_refuses_incomplete_folders(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        VisionLLM.from_pretrained(tmp_path)


def test_streamed_text_adds_up_to_each_answer(micro_model, images):
    from visionllm.formats.task_table import build_instruction
    from visionllm.formats.tasks import Task

    codec = micro_model.config.codec()
    instructions = [
        build_instruction(Task.CAPTION),
        build_instruction(Task.DETECTION, classes=["circle"], config=codec),
        build_instruction(Task.VQA, question="what colour is it?"),
    ]
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    results = micro_model.predict(images, instructions, on_text=lambda i, delta: pieces[i].append(delta))
    for i, result in enumerate(results):
        if hasattr(result.prediction, "text"):
            assert "".join(pieces[i]) == result.prediction.text
        else:
            assert pieces[i] == []
