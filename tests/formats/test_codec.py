import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visionllm.formats import tokens as tk
from visionllm.formats.codec import (
    CodecError,
    OutputFormat,
    OutputKind,
    bind_classes,
    decode_slots,
    decode_text,
    dequantize,
    encode_answer,
    encode_slot,
    encode_text_answer,
    parse_class_binding,
    parse_format_header,
    quantize,
)
from visionllm.formats.results import Detections, TextAnswer
from visionllm.formats.tokens import CodecConfig, CodecVocabulary

WH = (128, 96)
CONFIG = CodecConfig()


# --- class binding -----------------------------------------------------------------------------


def test_binding_round_trips_any_phrase():
    names = ["person", "red circle", 'the "big" one', "naïve café", "a, b: c"]
    binding = bind_classes(names)
    assert binding.startswith('{"person": <c0>, "red circle": <c1>')
    assert parse_class_binding(f"Find {binding} in <image>.") == tuple(names)


def test_binding_allows_512_classes_and_refuses_513():
    assert bind_classes([f"class {i}" for i in range(512)]).endswith("<c511>}")
    with pytest.raises(CodecError, match="at most 512"):
        bind_classes([f"class {i}" for i in range(513)])


@pytest.mark.parametrize(
    ("names", "message"),
    [([], "empty"), (["a", "a"], "unique"), (["a <b>"], "'<' or '>'"), ([""], "non-empty")],
)
def test_binding_refuses_bad_class_sets(names, message):
    with pytest.raises(CodecError, match=message):
        bind_classes(names)


def test_binding_parse_refuses_gaps():
    with pytest.raises(CodecError, match="not <c0>"):
        parse_class_binding('{"a": <c0>, "b": <c2>}')


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "header"),
    [
        (OutputFormat.boxes(), "<fmt> <cls> <x1> <y1> <x2> <y2> </fmt>"),
        (OutputFormat.polygons(3), "<fmt> <cls> <x1> <y1> <x2> <y2> <x3> <y3> </fmt>"),
        (OutputFormat.keypoints(2), "<fmt> <kpt> <cls> <x1> <y1> <x2> <y2> </fmt>"),
        (OutputFormat.text(), "<fmt> <text> </fmt>"),
    ],
)
def test_format_headers_round_trip(fmt, header):
    assert " ".join(fmt.header_tokens()) == header
    assert parse_format_header(header.split()) == fmt


@pytest.mark.parametrize(
    "header",
    [
        "<fmt> </fmt>",
        "<fmt> <cls> <x1> <y1> </fmt>",  # one point is neither a box nor a polygon
        "<fmt> <cls> <x1> <y2> <x2> <y1> </fmt>",
        "<fmt> <cls> <x1> <y1> <x2> <y2>",
        "<cls> <x1> <y1> <x2> <y2> </fmt>",
        "<fmt> <text> <cls> </fmt>",
    ],
)
def test_malformed_headers_parse_to_none(header):
    assert parse_format_header(header.split()) is None


@pytest.mark.parametrize(("kind", "points"), [("boxes", 3), ("polygons", 2), ("text", 1), ("masks", 0)])
def test_invalid_formats_raise(kind, points):
    with pytest.raises(CodecError):
        OutputFormat(OutputKind(kind), points)


def test_format_beyond_vocabulary_is_refused():
    with pytest.raises(CodecError, match="at most 64 points"):
        OutputFormat.polygons(65).validate(CONFIG)


# --- coordinates -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    x=st.floats(0, 128),
    y=st.floats(0, 96),
    ax=st.floats(0, 128),
    ay=st.floats(0, 96),
    coord_range=st.sampled_from([16, 128, 512, 1000]),
)
def test_quantize_error_is_at_most_half_a_bin(x, y, ax, ay, coord_range):
    bins = quantize(np.array([x, y]), np.array([ax, ay]), WH, coord_range)
    assert np.all(np.abs(bins) <= coord_range)
    back = dequantize(bins, np.array([ax, ay]), WH, coord_range)
    half_bin = np.array(WH) / (2 * coord_range)
    assert np.all(np.abs(back - [x, y]) <= half_bin + 1e-9)


@settings(max_examples=200, deadline=None)
@given(
    corners=st.lists(st.floats(0, 1), min_size=4, max_size=4),
    anchor=st.lists(st.floats(0, 1), min_size=2, max_size=2),
)
def test_box_encode_decode_error_is_at_most_half_a_bin(corners, anchor):
    x1, x2 = sorted(corners[:2])
    y1, y2 = sorted(corners[2:])
    box = np.array([x1 * WH[0], y1 * WH[1], x2 * WH[0], y2 * WH[1]])
    anchor_px = np.array(anchor) * WH
    slot = encode_slot(OutputFormat.boxes(), 1, box.reshape(2, 2), anchor_px, WH)
    decoded = decode_slots([slot], OutputFormat.boxes(), ["a", "b"], WH, anchors_xy_px=anchor_px[None])
    assert decoded.clean
    det = decoded.prediction
    assert det.class_names == ("b",)
    half_bin = np.array(WH * 2) / (2 * CONFIG.coord_range)
    assert np.all(np.abs(det.boxes_xyxy_px[0] - box) <= half_bin + 1e-9)


@settings(max_examples=100, deadline=None)
@given(
    points=st.lists(st.tuples(st.floats(0, 128), st.floats(0, 96)), min_size=17, max_size=17),
    visible=st.lists(st.booleans(), min_size=17, max_size=17),
)
def test_keypoints_round_trip_with_invisible_points(points, visible):
    fmt = OutputFormat.keypoints(17)
    visible[0] = True
    points = np.array(points)
    slot = encode_slot(fmt, 0, points, np.array([64.0, 48.0]), WH, visible=np.array(visible))
    assert slot.count(tk.INVISIBLE) == 2 * (17 - sum(visible))
    decoded = decode_slots([slot], fmt, ["person"], WH, anchors_xy_px=np.array([[64.0, 48.0]]))
    assert decoded.clean
    kp = decoded.prediction.keypoints_xyv_px[0]
    np.testing.assert_array_equal(kp[:, 2], np.where(visible, 2, 0))
    shown = np.array(visible)
    assert np.all(np.abs(kp[shown, :2] - points[shown]) <= np.array(WH) / (2 * CONFIG.coord_range) + 1e-9)


def test_polygon_slot_keeps_its_points_and_box():
    fmt = OutputFormat.polygons(4)
    square = np.array([[10.0, 10.0], [50.0, 10.0], [50.0, 40.0], [10.0, 40.0]])
    slot = encode_slot(fmt, 0, square, np.array([30.0, 30.0]), WH)
    det = decode_slots([slot], fmt, ["square"], WH, anchors_xy_px=np.array([[30.0, 30.0]])).prediction
    np.testing.assert_allclose(det.polygons_xy_px[0], square, atol=0.13)
    np.testing.assert_allclose(det.boxes_xyxy_px[0], [10, 10, 50, 40], atol=0.13)


def test_encode_refuses_wrong_point_counts_and_classes():
    with pytest.raises(CodecError, match="needs 2 points"):
        encode_slot(OutputFormat.boxes(), 0, np.zeros((3, 2)), np.zeros(2), WH)
    with pytest.raises(CodecError, match="outside"):
        encode_slot(OutputFormat.boxes(), 512, np.zeros((2, 2)), np.zeros(2), WH)
    with pytest.raises(CodecError, match="only keypoints"):
        encode_slot(OutputFormat.boxes(), 0, np.zeros((2, 2)), np.zeros(2), WH, visible=np.ones(2, bool))


# --- decoding malformed output (table-driven) --------------------------------------------------

BOX = OutputFormat.boxes()
GOOD = ["<c0>", "<p-10>", "<p-10>", "<p10>", "<p10>"]


@pytest.mark.parametrize(
    ("slot", "kept", "reason"),
    [
        (GOOD, 1, None),
        (["<no-obj>"], 0, None),
        ([], 0, "empty slot"),
        (["<c0>", "<p1>", "<p2>", "<p3>"], 0, "expected 4 coordinate tokens, got 3"),
        ([*GOOD, "<p5>", "<p6>"], 1, "2 extra tokens"),
        (["<c7>", "<p1>", "<p2>", "<p3>", "<p4>"], 0, "not bound"),
        (["person", "<p1>", "<p2>", "<p3>", "<p4>"], 0, "not a class token"),
        (["<c0>", "<p1>", "<p2>", "<p9999>", "<p4>"], 0, "not a location token"),
        (["<c0>", "<p1>", "<p-inv>", "<p3>", "<p4>"], 0, "not a location token"),
        (["<c0>", "<p1>", "red", "<p3>", "<p4>"], 0, "not a location token"),
        (["<no-obj>", "<p1>"], 0, "tokens after <no-obj>"),
        (["<c0>", "<p20>", "<p20>", "<p-20>", "<p-20>"], 1, None),  # reversed corners are reordered
    ],
)
def test_decode_slot_table(slot, kept, reason):
    decoded = decode_slots([slot], BOX, ["a", "b"], WH)
    assert len(decoded.prediction) == kept
    if reason is None:
        assert decoded.clean
    else:
        assert any(reason in d.reason for d in decoded.dropped), decoded.dropped
    if kept:
        x1, y1, x2, y2 = decoded.prediction.boxes_xyxy_px[0]
        assert x1 <= x2 and y1 <= y2


def test_decode_keeps_good_slots_among_bad_ones_and_ranks_by_score():
    slots = [GOOD, ["<c9>"], ["<c1>", "<p0>", "<p0>", "<p5>", "<p5>"]]
    decoded = decode_slots(slots, BOX, ["a", "b"], WH, scores=[0.2, 0.9, 0.7])
    assert decoded.prediction.class_names == ("b", "a")
    np.testing.assert_allclose(decoded.prediction.scores, [0.7, 0.2])
    assert [d.slot for d in decoded.dropped] == [1]


def test_decode_from_token_ids():
    vocab = CodecVocabulary(CONFIG, offset=32000)
    ids = vocab.encode(GOOD)
    assert min(ids) >= 32000
    decoded = decode_slots([ids, [5, 6]], BOX, ["a"], WH, vocabulary=vocab)
    assert len(decoded.prediction) == 1
    assert decoded.dropped[0].tokens[0] == "<id:5>"


def test_keypoint_slot_with_no_visible_point_is_dropped():
    fmt = OutputFormat.keypoints(2)
    decoded = decode_slots([["<c0>"] + [tk.INVISIBLE] * 4], fmt, ["person"], WH)
    assert len(decoded.prediction) == 0
    assert decoded.dropped[0].reason == "no visible keypoint"


@pytest.mark.parametrize(
    ("text", "kind", "count", "dropped"),
    [
        ("<fmt> <text> </fmt> two red circles", "text", None, 0),
        ("two red circles", "text", None, 0),
        ("", "text", None, 0),
        ("<fmt> <cls> <x1> <y1> <x2> <y2> </fmt> " + " ".join(GOOD), "boxes", 1, 0),
        ("<fmt> <cls> <x1> <y1> <x2> <y2> </fmt> " + " ".join(GOOD) + " <sep> <no-obj> <sep> <c1> <p3>", "boxes", 1, 1),
        ("noise <fmt> <cls> <x1> <y1> <x2> <y2> </fmt> " + " ".join(GOOD), "boxes", 1, 1),
        (" ".join(GOOD), "boxes", 1, 1),  # no header: read by slot length, and said so
        ("<fmt> <cls> <x1> <y1> <x2> <y2> " + " ".join(GOOD), "text", None, 1),  # unclosed header
        ("<fmt> <cls> <x1> </fmt> " + " ".join(GOOD), "boxes", 1, 2),  # malformed header, then guessed
        ("<fmt> <cls> " + " ".join(f"<x{i}> <y{i}>" for i in range(1, 80)) + " </fmt>", "polygons", 0, 1),
    ],
)
def test_decode_text_table(text, kind, count, dropped):
    decoded = decode_text(text, ["a", "b"], WH)
    if kind == "text":
        assert isinstance(decoded.prediction, TextAnswer)
    else:
        assert isinstance(decoded.prediction, Detections)
        assert len(decoded.prediction) == count
    assert len(decoded.dropped) == dropped, decoded.dropped


def test_decode_text_uses_expected_format_when_header_missing():
    decoded = decode_text("<c0> <p1> <p2> <p3> <p4> <p5> <p6>", ["a"], WH, expected_format=OutputFormat.polygons(3))
    assert decoded.prediction.polygons_xy_px[0].shape == (3, 2)
    assert "no usable format header" in decoded.dropped[0].reason


def test_answer_text_round_trip_with_anchors():
    fmt = OutputFormat.boxes()
    anchors = np.array([[20.0, 20.0], [100.0, 70.0]])
    boxes = np.array([[5.0, 6.0, 30.0, 40.0], [90.0, 50.0, 120.0, 90.0]])
    slots = [encode_slot(fmt, i, boxes[i].reshape(2, 2), anchors[i], WH) for i in range(2)]
    text = encode_answer(fmt, slots)
    det = decode_text(text, ["a", "b"], WH, anchors_xy_px=anchors).prediction
    order = np.argsort(det.class_names)
    np.testing.assert_allclose(det.boxes_xyxy_px[order], boxes, atol=0.13)
    assert encode_text_answer(" hello ") == "<fmt> <text> </fmt> hello"


special = st.sampled_from([*tk.STRUCTURE_TOKENS, "<c0>", "<c1>", "<c600>", "<p0>", "<p-512>", "<p513>", "<x1>", "<y2>"])


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_random_strings_never_raise(text):
    decoded = decode_text(text, ["a", "b"], WH)
    assert isinstance(decoded.prediction, Detections | TextAnswer)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(special, st.text(max_size=5)), max_size=60), st.sampled_from(["boxes", "polygons", "keypoints"])
)
def test_random_token_soup_never_raises(tokens, kind):
    header = {"boxes": BOX, "polygons": OutputFormat.polygons(3), "keypoints": OutputFormat.keypoints(3)}[kind]
    text = " ".join([*header.header_tokens(), *tokens])
    decoded = decode_text(text, ["a", "b"], WH)
    json.dumps([d.reason for d in decoded.dropped])
    slots = [tokens[i : i + header.slot_length] for i in range(0, len(tokens), header.slot_length)]
    decode_slots(slots, header, ["a", "b"], WH)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(special, st.text(max_size=5)), max_size=40),
    st.lists(st.sampled_from([tk.KPT, tk.CLS, tk.TEXT, "<x1>", "<y1>", "<x2>", "<y2>", "<c0>"]), max_size=6),
)
def test_token_soup_with_any_header_never_raises(tokens, header_body):
    # The soup starts with <fmt>, then any header tokens: well-formed or not, as a constrained decoder may emit.
    text = " ".join([tk.FMT_OPEN, *header_body, tk.FMT_CLOSE, *tokens])
    decoded = decode_text(text, ["a"], WH)
    assert isinstance(decoded.prediction, Detections | TextAnswer)


@pytest.mark.parametrize("header", ["<fmt> <kpt> <cls> </fmt>", "<fmt> <cls> </fmt>", "<fmt> <kpt> </fmt>"])
def test_headers_without_points_are_not_formats(header):
    assert parse_format_header(header.split()) is None
    decode_text(header, ["a"], (128, 128))  # and decoding them does not raise


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**40), 2**40), max_size=30))
def test_random_ids_never_raise(ids):
    vocab = CodecVocabulary(CONFIG, offset=100)
    decode_slots([ids], BOX, ["a"], WH, vocabulary=vocab)
    assert len(vocab.decode(ids)) == len(ids)


def test_vocabulary_layout():
    vocab = CodecVocabulary(CodecConfig(coord_range=4, max_points=17, max_classes=3), offset=10)
    assert len(vocab) == len(tk.STRUCTURE_TOKENS) + 17 * 2 + 3 + 9
    assert vocab.id_to_token(10) == tk.IMAGE
    assert vocab.token_to_id("<p4>") == 10 + len(vocab) - 1
    assert vocab.id_to_token(9) is None
    with pytest.raises(KeyError, match="not a codec token"):
        vocab.token_to_id("<p5>")
