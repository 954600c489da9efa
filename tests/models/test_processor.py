import numpy as np
import pytest
from PIL import Image

from visionllm.formats.codec import OutputFormat
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.common.inputs import ProcessorError
from visionllm.models.common.sequence import Segments


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
    row = proc.add_slot_groups(Segments(), polygons)
    assert len(row) == proc.num_slots(polygons) * 33 and max(row.groups) == proc.num_slots(polygons) - 1
    assert proc.vocab.decode(row.ids[:3]) == ["<cls>", "<x1>", "<y1>"]
    assert proc.vocab.decode(proc.header_ids(boxes)) == list(boxes.header_tokens())


def test_class_phrases_are_located_in_the_encoder_input(micro_model):
    proc = micro_model.processor
    classes = ["red circle", "star", "circle"]
    instruction = build_instruction(Task.DETECTION, classes=classes, config=micro_model.config.codec())
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
    long = build_instruction(Task.DETECTION, classes=classes, config=micro_model.config.codec()).text
    limit = proc.config.text_encoder.max_length
    proc.config.text_encoder.max_length = 40
    try:
        out = proc.encoder_inputs([long], [classes])
    finally:
        proc.config.text_encoder.max_length = limit
    assert not out["phrase_mask"][0].all()


def _rotated_jpeg(path) -> None:
    """A 64 x 32 JPEG stored sideways: EXIF orientation 6 shows it 32 x 64, the stored left edge on top."""
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :16] = (255, 0, 0)  # stored: a red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)


def test_images_are_read_upright_as_displayed(micro_model, tmp_path):
    _rotated_jpeg(tmp_path / "sideways.jpg")
    loaded = micro_model.processor.image(tmp_path / "sideways.jpg")
    assert loaded.size_wh == (32, 64)
    red = loaded.pixels[0] > loaded.pixels[1]  # red channel above green: the band
    assert red[:8].float().mean() > 0.9 and red[-8:].float().mean() < 0.1  # the band is now on top
    with Image.open(tmp_path / "sideways.jpg") as image:  # a PIL image handed over directly, too
        assert micro_model.processor.image(image).size_wh == (32, 64)
