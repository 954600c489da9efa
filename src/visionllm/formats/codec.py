"""The output codec: class binding, coordinate bins, output formats, encoding and decoding.

One grammar serves every structured task. An answer is a format header followed by one group of
tokens per output slot:

    <fmt> <cls> <x1> <y1> <x2> <y2> </fmt> <c0> <p-12> <p30> <p40> <p96> <sep> <no-obj> <sep> ...

Slot k is anchored at a point a_k (the location of image token k; the image centre when no anchor
is given). A coordinate x becomes the bin round((x - a_x) / W * R) in [-R, R] (y likewise with the
image height), so the rounding error is at most half a bin, W / (2R) pixels. Free-text answers are
`<fmt> <text> </fmt>` followed by the text.

Decoding never raises on malformed model output: it keeps every slot that parses and reports the
rest as `Dropped` entries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from visionllm.formats import tokens as tk
from visionllm.formats.results import Decoded, Detections, Dropped, TextAnswer
from visionllm.formats.tokens import CodecConfig, CodecVocabulary


class CodecError(ValueError):
    """An encoding request that cannot be honoured (too many classes, bad point count, ...)."""


class OutputKind(str, Enum):
    """What an answer is made of. BOXES..TEXT are v1's grammar; MASKS and IMAGE come from v2's decoders."""

    BOXES = "boxes"
    POLYGONS = "polygons"
    KEYPOINTS = "keypoints"
    TEXT = "text"
    MASKS = "masks"
    IMAGE = "image"


@dataclass(frozen=True)
class OutputFormat:
    """The tuple each output slot carries.

    Attributes:
        kind: BOXES (c, x1, y1, x2, y2), POLYGONS (c, x1, y1, ..., xN, yN), KEYPOINTS (c and K points,
            each a location pair or two <p-inv>), or TEXT.
        num_points: 2 for boxes, N >= 3 for polygons, K >= 1 for keypoints, 0 for text.
    """

    kind: OutputKind
    num_points: int = 0

    def __post_init__(self) -> None:
        kind = OutputKind(self.kind)
        object.__setattr__(self, "kind", kind)
        valid = {
            OutputKind.BOXES: self.num_points == 2,
            OutputKind.POLYGONS: self.num_points >= 3,
            OutputKind.KEYPOINTS: self.num_points >= 1,
            OutputKind.TEXT: self.num_points == 0,
        }
        if kind not in valid:
            raise CodecError(f"{kind.value} answers are not part of the token grammar (they come from v2 decoders)")
        if not valid[kind]:
            raise CodecError(f"{kind.value} cannot have {self.num_points} points")

    @classmethod
    def boxes(cls) -> OutputFormat:
        return cls(OutputKind.BOXES, 2)

    @classmethod
    def polygons(cls, num_points: int) -> OutputFormat:
        if num_points < 3:
            raise CodecError(f"a polygon needs at least 3 points, got {num_points}")
        return cls(OutputKind.POLYGONS, num_points)

    @classmethod
    def keypoints(cls, num_points: int = 17) -> OutputFormat:
        return cls(OutputKind.KEYPOINTS, num_points)

    @classmethod
    def text(cls) -> OutputFormat:
        return cls(OutputKind.TEXT, 0)

    @property
    def structured(self) -> bool:
        return self.kind is not OutputKind.TEXT

    @property
    def slot_length(self) -> int:
        """Tokens in one slot: the class token plus two per point (0 for text)."""
        return 1 + 2 * self.num_points if self.structured else 0

    def header_tokens(self) -> tuple[str, ...]:
        """The format header the model emits first, e.g. <fmt> <cls> <x1> <y1> <x2> <y2> </fmt>."""
        if self.kind is OutputKind.TEXT:
            return (tk.FMT_OPEN, tk.TEXT, tk.FMT_CLOSE)
        marker = (tk.KPT,) if self.kind is OutputKind.KEYPOINTS else ()
        coords = [t for i in range(1, self.num_points + 1) for t in (tk.x_token(i), tk.y_token(i))]
        return (tk.FMT_OPEN, *marker, tk.CLS, *coords, tk.FMT_CLOSE)

    def tuple_text(self) -> str:
        """The tuple in words for instructions, e.g. "(c, x1, y1, x2, y2)"."""
        if self.kind is OutputKind.TEXT:
            return "plain text"
        if self.num_points <= 3:
            coords = ", ".join(f"x{i}, y{i}" for i in range(1, self.num_points + 1))
        else:
            coords = f"x1, y1, x2, y2, ..., x{self.num_points}, y{self.num_points}"
        return f"(c, {coords})"

    def validate(self, config: CodecConfig) -> None:
        if self.num_points > config.max_points:
            raise CodecError(
                f"{self.num_points} points asked for, but the vocabulary has <x1>..<x{config.max_points}> only; "
                f"ask for at most {config.max_points} points or build the model with a larger max_points"
            )


def parse_format_header(tokens: Sequence[str]) -> OutputFormat | None:
    """The format a header names, or None if `tokens` is not a well-formed header."""
    if len(tokens) < 3 or tokens[0] != tk.FMT_OPEN or tokens[-1] != tk.FMT_CLOSE:
        return None
    body = list(tokens[1:-1])
    if body == [tk.TEXT]:
        return OutputFormat.text()
    keypoints = bool(body) and body[0] == tk.KPT
    if keypoints:
        body = body[1:]
    if not body or body[0] != tk.CLS or len(body) % 2 != 1:
        return None
    num_points = (len(body) - 1) // 2
    expected = [t for i in range(1, num_points + 1) for t in (tk.x_token(i), tk.y_token(i))]
    if body[1:] != expected:
        return None
    if keypoints:
        return OutputFormat.keypoints(num_points) if num_points >= 1 else None
    if num_points == 2:
        return OutputFormat.boxes()
    return OutputFormat.polygons(num_points) if num_points >= 3 else None


# ---------------------------------------------------------------------------------------------
# Class binding


def bind_classes(class_names: Sequence[str], config: CodecConfig = CodecConfig()) -> str:
    """The instruction's class set, e.g. {"person": <c0>, "red circle": <c1>}.

    Any phrase can be a class (a referring expression too). Names are JSON-quoted.

    Raises:
        CodecError: no names, duplicates, more than `config.max_classes`, or a name with < or >.
    """
    names = [str(n).strip() for n in class_names]
    if not names:
        raise CodecError("the class set is empty: name at least one class")
    if len(names) > config.max_classes:
        raise CodecError(
            f"{len(names)} classes asked for, but at most {config.max_classes} can be bound in one instruction; "
            "split the class list over several requests"
        )
    bad = [n for n in names if not n or "<" in n or ">" in n]
    if bad:
        raise CodecError(f"class names must be non-empty and contain no '<' or '>': {bad[:5]}")
    seen: set[str] = set()
    duplicates = [n for n in names if n in seen or seen.add(n)]
    if duplicates:
        raise CodecError(f"class names must be unique; repeated: {sorted(set(duplicates))[:5]}")
    pairs = ", ".join(f"{json.dumps(n, ensure_ascii=False)}: {tk.class_token(i)}" for i, n in enumerate(names))
    return "{" + pairs + "}"


_BINDING_RE = re.compile(r'("(?:[^"\\]|\\.)*")\s*:\s*<c(0|[1-9]\d*)>')


def parse_class_binding(instruction: str) -> tuple[str, ...]:
    """Class names bound in an instruction, by index. Raises CodecError if the indices are not 0..n-1."""
    found = {int(i): json.loads(name) for name, i in _BINDING_RE.findall(instruction)}
    if sorted(found) != list(range(len(found))):
        raise CodecError(f"class tokens in the instruction are not <c0>..<c{len(found) - 1}>: {sorted(found)}")
    return tuple(found[i] for i in range(len(found)))


# ---------------------------------------------------------------------------------------------
# Coordinates


def quantize(
    points_xy_px: np.ndarray, anchor_xy_px: np.ndarray, image_wh: tuple[int, int], coord_range: int
) -> np.ndarray:
    """Bins of points as offsets from an anchor.

    Args:
        points_xy_px: (..., 2) pixels.
        anchor_xy_px: (2,) or broadcastable (..., 2) pixels.
        image_wh: (W, H); an offset of one image width is R bins.
        coord_range: R.

    Returns:
        (..., 2) int64 bins in [-R, R].
    """
    extent = np.asarray(image_wh, dtype=np.float64)
    offsets = (np.asarray(points_xy_px, dtype=np.float64) - np.asarray(anchor_xy_px, dtype=np.float64)) / extent
    return np.clip(np.rint(offsets * coord_range), -coord_range, coord_range).astype(np.int64)


def dequantize(bins: np.ndarray, anchor_xy_px: np.ndarray, image_wh: tuple[int, int], coord_range: int) -> np.ndarray:
    """Pixels of (..., 2) bins relative to an anchor (the inverse of `quantize` up to half a bin)."""
    extent = np.asarray(image_wh, dtype=np.float64)
    return np.asarray(anchor_xy_px, dtype=np.float64) + np.asarray(bins, dtype=np.float64) / coord_range * extent


def image_centre(image_wh: tuple[int, int]) -> np.ndarray:
    return np.asarray(image_wh, dtype=np.float64) / 2.0


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_slot(
    fmt: OutputFormat,
    class_index: int,
    points_xy_px: np.ndarray,
    anchor_xy_px: np.ndarray,
    image_wh: tuple[int, int],
    config: CodecConfig = CodecConfig(),
    visible: np.ndarray | None = None,
) -> list[str]:
    """Tokens of one object: its class token and its points as location tokens.

    Args:
        fmt: a structured output format.
        class_index: index into the instruction's class set.
        points_xy_px: (num_points, 2): box corners (x1, y1), (x2, y2); polygon points already resampled
            (see `ops.polygons.resample_polygon`); or keypoints in their schema's order.
        anchor_xy_px: (2,) the slot's anchor.
        image_wh: (W, H) in pixels.
        visible: (num_points,) bool, keypoints only: False points become <p-inv> <p-inv>.
    """
    if not fmt.structured:
        raise CodecError("encode_slot is for structured formats; text answers are plain text")
    fmt.validate(config)
    if not 0 <= class_index < config.max_classes:
        raise CodecError(f"class index {class_index} outside <c0>..<c{config.max_classes - 1}>")
    points = np.asarray(points_xy_px, dtype=np.float64).reshape(-1, 2)
    if len(points) != fmt.num_points:
        raise CodecError(f"{fmt.kind.value} slot needs {fmt.num_points} points, got {len(points)}")
    bins = quantize(points, anchor_xy_px, image_wh, config.coord_range)
    shown = np.ones(len(points), dtype=bool) if visible is None else np.asarray(visible, dtype=bool)
    if visible is not None and fmt.kind is not OutputKind.KEYPOINTS:
        raise CodecError("only keypoints can be invisible")
    slot = [tk.class_token(class_index)]
    for (bx, by), show in zip(bins.tolist(), shown.tolist(), strict=True):
        slot += [tk.loc_token(bx), tk.loc_token(by)] if show else [tk.INVISIBLE, tk.INVISIBLE]
    return slot


def encode_answer(
    fmt: OutputFormat,
    slots: Sequence[Sequence[str]],
) -> str:
    """The full answer text: header, then the slot groups separated by <sep>."""
    body = f" {tk.SEP} ".join(" ".join(slot) for slot in slots)
    return " ".join(fmt.header_tokens()) + (" " + body if body else "")


def encode_text_answer(text: str) -> str:
    return " ".join(OutputFormat.text().header_tokens()) + " " + text.strip()


# ---------------------------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True)
class _ParsedSlot:
    class_index: int
    points_xy_px: np.ndarray  # (N, 2)
    visible: np.ndarray  # (N,) bool


def _parse_slot(
    slot: Sequence[str],
    slot_index: int,
    fmt: OutputFormat,
    num_classes: int,
    anchor_xy_px: np.ndarray,
    image_wh: tuple[int, int],
    config: CodecConfig,
    dropped: list[Dropped],
) -> _ParsedSlot | None:
    """One slot's tokens -> class and points, or None (and a Dropped entry unless it was <no-obj>)."""
    slot = tuple(slot)

    def drop(reason: str, tokens: tuple[str, ...] = slot) -> None:
        dropped.append(Dropped(slot_index, tokens, reason))

    if not slot:
        drop("empty slot")
        return None
    if slot[0] == tk.NO_OBJECT:
        if len(slot) > 1:
            drop("tokens after <no-obj>", slot[1:])
        return None
    class_index = tk.parse_class_token(slot[0])
    if class_index is None:
        drop(f"slot starts with {slot[0]!r}, not a class token")
        return None
    if class_index >= num_classes:
        drop(f"class {slot[0]} is not bound (the instruction binds {num_classes} classes)")
        return None
    wanted = 2 * fmt.num_points
    coords = slot[1:]
    if len(coords) < wanted:
        drop(f"expected {wanted} coordinate tokens, got {len(coords)}")
        return None
    if len(coords) > wanted:
        drop(f"{len(coords) - wanted} extra tokens after the {wanted} coordinates", coords[wanted:])
        coords = coords[:wanted]
    values = np.zeros(wanted, dtype=np.int64)
    invisible = np.zeros(wanted, dtype=bool)
    for k, token in enumerate(coords):
        value = tk.parse_loc_token(token)
        if value is not None and abs(value) <= config.coord_range:
            values[k] = value
        elif token == tk.INVISIBLE and fmt.kind is OutputKind.KEYPOINTS:
            invisible[k] = True
        else:
            limit = config.coord_range
            drop(f"coordinate {k + 1} is {token!r}, not a location token in [-{limit}, {limit}]")
            return None
    invisible = invisible.reshape(-1, 2)
    half = invisible.any(axis=1) & ~invisible.all(axis=1)
    if half.any():
        drop(f"points {(np.flatnonzero(half) + 1).tolist()} mix <p-inv> with a location: read as invisible")
    visible = ~invisible.any(axis=1)
    points = dequantize(values.reshape(-1, 2), anchor_xy_px, image_wh, config.coord_range)
    points = np.clip(points, 0.0, np.asarray(image_wh, dtype=np.float64))
    return _ParsedSlot(class_index, points, visible)


def decode_slots(
    slots: Sequence[Sequence[str | int]],
    fmt: OutputFormat,
    class_names: Sequence[str],
    image_wh: tuple[int, int],
    config: CodecConfig = CodecConfig(),
    anchors_xy_px: np.ndarray | None = None,
    scores: Sequence[float] | None = None,
    vocabulary: CodecVocabulary | None = None,
) -> Decoded:
    """Typed detections from per-slot tokens (the parallel decoder's output).

    Args:
        slots: K slots, each a sequence of tokens, or of token ids when `vocabulary` is given.
        fmt: the structured format the header named.
        class_names: the instruction's class set; <ci> is class_names[i].
        image_wh: (W, H) in pixels.
        anchors_xy_px: (K, 2) slot anchors in pixels; the image centre when None.
        scores: (K,) per-slot confidence in [0, 1]; 1.0 when None.
        vocabulary: maps ids to tokens when slots hold ids.

    Returns:
        `Decoded` with `Detections` (boxes from the points' extent for polygons and keypoints; polygons
        and keypoints attached) sorted by score, and what was dropped.
    """
    if not fmt.structured:
        raise CodecError("decode_slots is for structured formats")
    dropped: list[Dropped] = []
    anchors = (
        np.repeat(image_centre(image_wh)[None], len(slots), axis=0)
        if anchors_xy_px is None
        else np.asarray(anchors_xy_px, dtype=np.float64).reshape(-1, 2)
    )
    if len(anchors) != len(slots):
        raise CodecError(f"{len(slots)} slots but {len(anchors)} anchors")
    slot_scores = np.ones(len(slots)) if scores is None else np.clip(np.asarray(scores, dtype=np.float64), 0, 1)
    parsed: list[tuple[int, _ParsedSlot]] = []
    for k, slot in enumerate(slots):
        slot_tokens = _as_tokens(slot, vocabulary)
        result = _parse_slot(slot_tokens, k, fmt, len(class_names), anchors[k], image_wh, config, dropped)
        if result is None:
            continue
        if fmt.kind is OutputKind.KEYPOINTS and not result.visible.any():
            dropped.append(Dropped(k, tuple(slot_tokens), "no visible keypoint"))
            continue
        parsed.append((k, result))
    return Decoded(_to_detections(parsed, fmt, class_names, slot_scores), tuple(dropped))


def _as_tokens(slot: Sequence[str | int], vocabulary: CodecVocabulary | None) -> list[str]:
    out = []
    for item in slot:
        if isinstance(item, str):
            out.append(item)
        elif vocabulary is not None:
            out.append(vocabulary.id_to_token(int(item)) or f"<id:{int(item)}>")
        else:
            out.append(f"<id:{int(item)}>")
    return out


def _to_detections(
    parsed: list[tuple[int, _ParsedSlot]], fmt: OutputFormat, class_names: Sequence[str], scores: np.ndarray
) -> Detections:
    if not parsed:
        empty = Detections.empty()
        if fmt.kind is OutputKind.POLYGONS:
            return Detections(empty.boxes_xyxy_px, empty.scores, (), polygons_xy_px=())
        if fmt.kind is OutputKind.KEYPOINTS:
            return Detections(empty.boxes_xyxy_px, empty.scores, (), keypoints_xyv_px=np.zeros((0, fmt.num_points, 3)))
        return empty
    boxes, polygons, keypoints = [], [], []
    for _, slot in parsed:
        shown = slot.points_xy_px[slot.visible]
        boxes.append([*shown.min(axis=0), *shown.max(axis=0)])
        if fmt.kind is OutputKind.POLYGONS:
            polygons.append(slot.points_xy_px)
        if fmt.kind is OutputKind.KEYPOINTS:
            flags = np.where(slot.visible, 2.0, 0.0)[:, None]
            keypoints.append(np.concatenate([slot.points_xy_px, flags], axis=1))
    detections = Detections(
        np.asarray(boxes),
        scores[[k for k, _ in parsed]],
        tuple(class_names[slot.class_index] for _, slot in parsed),
        polygons_xy_px=tuple(polygons) if fmt.kind is OutputKind.POLYGONS else None,
        keypoints_xyv_px=np.stack(keypoints) if fmt.kind is OutputKind.KEYPOINTS else None,
    )
    return detections.sorted_by_score()


def split_answer(tokens: Sequence[str]) -> tuple[OutputFormat | None, list[str], list[list[str]], list[Dropped]]:
    """Split answer tokens into (format, header tokens, slot groups, dropped)."""
    dropped: list[Dropped] = []
    tokens = list(tokens)
    fmt = None
    header: list[str] = []
    if tk.FMT_OPEN in tokens:
        start = tokens.index(tk.FMT_OPEN)
        end = tokens.index(tk.FMT_CLOSE, start) if tk.FMT_CLOSE in tokens[start:] else None
        if start:
            dropped.append(Dropped(None, tuple(tokens[:start]), "tokens before the format header"))
        if end is None:
            dropped.append(Dropped(None, tuple(tokens[start:]), "format header is not closed by </fmt>"))
            return None, [], [], dropped
        header = tokens[start : end + 1]
        fmt = parse_format_header(header)
        if fmt is None:
            dropped.append(Dropped(None, tuple(header), "malformed format header"))
        tokens = tokens[end + 1 :]
    groups: list[list[str]] = [[]]
    for token in tokens:
        if token == tk.SEP:
            groups.append([])
        else:
            groups[-1].append(token)
    return fmt, header, [g for g in groups if g], dropped


def decode_text(
    text: str,
    class_names: Sequence[str],
    image_wh: tuple[int, int],
    config: CodecConfig = CodecConfig(),
    anchors_xy_px: np.ndarray | None = None,
    expected_format: OutputFormat | None = None,
) -> Decoded:
    """Typed result from a whole answer written as text (header, then groups separated by <sep>).

    Group i uses anchor i (the image centre when no anchors are given). When the header is missing
    or malformed, `expected_format` (the format the instruction asked for) is used instead, and
    that is reported; with neither, a structured-looking answer is read by its first group's length.
    """
    tokens = tk.split_tokens(text if isinstance(text, str) else "")
    fmt, _, groups, dropped = split_answer(tokens)
    if fmt is None and expected_format is not None:
        fmt = expected_format
        dropped.append(Dropped(None, (), f"no usable format header: read as {fmt.kind.value}"))
    if fmt is None:
        fmt = _guess_format(groups, config)
        if fmt is None or not fmt.structured:
            words = [t for g in groups for t in g]
            return Decoded(TextAnswer(" ".join(words)), tuple(dropped))
        dropped.append(Dropped(None, (), f"no format header: read as {fmt.kind.value} by slot length"))
    if not fmt.structured:
        words = [t for g in groups for t in g]
        return Decoded(TextAnswer(_detokenize(words, text)), tuple(dropped))
    if fmt.num_points > config.max_points:
        dropped.append(
            Dropped(None, tuple(tokens), f"format asks for {fmt.num_points} points, more than the vocabulary")
        )
        return Decoded(_to_detections([], fmt, class_names, np.zeros(0)), tuple(dropped))
    anchors = None
    if anchors_xy_px is not None:
        anchors = np.asarray(anchors_xy_px, dtype=np.float64).reshape(-1, 2)
        if len(anchors) < len(groups):
            dropped.append(
                Dropped(None, tuple(t for g in groups[len(anchors) :] for t in g), "more groups than anchors")
            )
            groups = groups[: len(anchors)]
        anchors = anchors[: len(groups)]
    decoded = decode_slots(groups, fmt, class_names, image_wh, config, anchors_xy_px=anchors)
    return Decoded(decoded.prediction, tuple(dropped) + decoded.dropped)


def _guess_format(groups: list[list[str]], config: CodecConfig) -> OutputFormat | None:
    if not groups or tk.parse_class_token(groups[0][0]) is None:
        return None
    num_points = (len(groups[0]) - 1) // 2
    if len(groups[0]) % 2 == 0 or num_points < 2 or num_points > config.max_points:
        return None
    return OutputFormat.boxes() if num_points == 2 else OutputFormat.polygons(num_points)


def _detokenize(words: list[str], original: str) -> str:
    """Free text after the header, with the original spacing where it can be recovered."""
    marker = tk.FMT_CLOSE
    if marker in original:
        return original.split(marker, 1)[1].strip()
    return " ".join(words)
