import numpy as np
import pytest

from visionllm.formats.codec import OutputFormat
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.v1.processor import ProcessorError, codec_config


def test_prefix_expands_image_into_m_placeholders(micro_model):
    proc = micro_model.processor
    ids = proc.prefix_ids("before <image> after")
    assert ids[0] == proc.bos_id
    assert ids.count(proc.image_id) == proc.num_image_tokens
    with pytest.raises(ProcessorError, match="exactly once"):
        proc.prefix_ids("<image> <image>")


def test_slot_layout_respects_the_token_budget(micro_model):
    proc = micro_model.processor
    boxes, polygons = OutputFormat.boxes(), OutputFormat.polygons(16)
    assert proc.num_slots(boxes) == min(proc.num_image_tokens, 120 // 5)
    assert proc.num_slots(polygons) == 120 // 33
    assert len(proc.slot_query_ids(polygons)) == proc.num_slots(polygons) * 33
    assert proc.vocab.decode(proc.header_ids(boxes)) == list(boxes.header_tokens())


def test_class_phrases_are_located_in_the_encoder_input(micro_model):
    proc = micro_model.processor
    classes = ["red circle", "star", "circle"]
    instruction = build_instruction(Task.DETECTION, classes=classes, config=codec_config(micro_model.config))
    caption = build_instruction(Task.CAPTION)
    out = proc.encoder_inputs([instruction.text, caption.text], [classes, ()])
    assert out["phrase_weights"].shape[:2] == (2, 3)
    assert out["phrase_mask"][0].tolist() == [True, True, True]
    assert not out["phrase_mask"][1].any()
    tokens = proc.text_tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    for c, words in enumerate([["red", "circle"], ["star"], ["circle"]]):
        picked = [tokens[i] for i in np.flatnonzero(out["phrase_weights"][0, c].numpy())]
        assert picked == words
        assert float(out["phrase_weights"][0, c].sum()) == pytest.approx(1.0)


def test_phrases_cut_off_by_the_length_limit_are_marked_missing(micro_model):
    proc = micro_model.processor
    classes = [f"class number {i}" for i in range(16)]
    long = build_instruction(Task.DETECTION, classes=classes, config=codec_config(micro_model.config)).text
    limit = proc.config.text_encoder.max_length
    proc.config.text_encoder.max_length = 40
    try:
        out = proc.encoder_inputs([long], [classes])
    finally:
        proc.config.text_encoder.max_length = limit
    assert not out["phrase_mask"][0].all()
