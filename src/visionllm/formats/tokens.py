"""The added vocabulary: class, location, format and structure tokens.

The LLM's tokenizer gets exactly `special_tokens(config)`, in this order, so that token ids of the
codec can be computed without the tokenizer (`CodecVocabulary`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

IMAGE = "<image>"
FMT_OPEN = "<fmt>"
FMT_CLOSE = "</fmt>"
TEXT = "<text>"
CLS = "<cls>"
KPT = "<kpt>"
SEP = "<sep>"
NO_OBJECT = "<no-obj>"
INVISIBLE = "<p-inv>"

STRUCTURE_TOKENS = (IMAGE, FMT_OPEN, FMT_CLOSE, TEXT, CLS, KPT, SEP, NO_OBJECT, INVISIBLE)

_CLASS_RE = re.compile(r"<c(0|[1-9]\d*)>")
_LOC_RE = re.compile(r"<p(0|-?[1-9]\d*)>")
_XY_RE = re.compile(r"<([xy])([1-9]\d*)>")
# What counts as one token when reading model output as text: anything in angle brackets without
# spaces, or a run of other non-space characters.
TOKEN_RE = re.compile(r"<[^<>\s]+>|[^<>\s]+|[<>]")


@dataclass(frozen=True)
class CodecConfig:
    """Sizes of the added vocabulary.

    Attributes:
        coord_range: R; coordinates are integer bins in [-R, R], i.e. 2R + 1 location tokens (paper: 512).
        max_points: largest N of an N-point output (polygons, keypoints); <x1>..<xN>, <y1>..<yN> exist.
        max_classes: number of class tokens <c0>..<c{max_classes-1}> (paper: 512).
    """

    coord_range: int = 512
    max_points: int = 64
    max_classes: int = 512

    def __post_init__(self) -> None:
        for name in ("coord_range", "max_points", "max_classes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"CodecConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.max_points < 17:
            raise ValueError(f"CodecConfig.max_points must be >= 17 (COCO keypoints), got {self.max_points}")


def class_token(index: int) -> str:
    return f"<c{index}>"


def loc_token(value: int) -> str:
    return f"<p{value}>"


def x_token(index: int) -> str:
    """Format token of the x coordinate of point `index` (1-based)."""
    return f"<x{index}>"


def y_token(index: int) -> str:
    return f"<y{index}>"


def parse_class_token(token: str) -> int | None:
    """Index of a class token, or None if `token` is not one."""
    match = _CLASS_RE.fullmatch(token)
    return int(match.group(1)) if match else None


def parse_loc_token(token: str) -> int | None:
    """Bin value of a location token, or None if `token` is not one (<p-inv> is not a location)."""
    match = _LOC_RE.fullmatch(token)
    return int(match.group(1)) if match else None


def parse_xy_token(token: str) -> tuple[str, int] | None:
    """("x" | "y", 1-based point index) of a format coordinate token, or None."""
    match = _XY_RE.fullmatch(token)
    return (match.group(1), int(match.group(2))) if match else None


def special_tokens(config: CodecConfig) -> tuple[str, ...]:
    """Every added token, in the order they are added to a tokenizer."""
    tokens = list(STRUCTURE_TOKENS)
    tokens += [x_token(i) for i in range(1, config.max_points + 1)]
    tokens += [y_token(i) for i in range(1, config.max_points + 1)]
    tokens += [class_token(i) for i in range(config.max_classes)]
    tokens += [loc_token(v) for v in range(-config.coord_range, config.coord_range + 1)]
    return tuple(tokens)


def split_tokens(text: str) -> list[str]:
    """Split model output text into tokens: <...> specials and whitespace-separated words."""
    return TOKEN_RE.findall(text)


@dataclass(frozen=True)
class CodecVocabulary:
    """Ids of the added tokens: token k of `special_tokens(config)` has id `offset + k`.

    Attributes:
        config: the codec sizes.
        offset: id of the first added token (the base tokenizer's length when they were appended).
    """

    config: CodecConfig = CodecConfig()
    offset: int = 0

    @cached_property
    def tokens(self) -> tuple[str, ...]:
        return special_tokens(self.config)

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {token: self.offset + k for k, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def token_to_id(self, token: str) -> int:
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a codec token") from None

    def id_to_token(self, token_id: int) -> str | None:
        """The codec token of an id, or None for ids outside the added vocabulary."""
        k = int(token_id) - self.offset
        return self.tokens[k] if 0 <= k < len(self.tokens) else None

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.token_to_id(t) for t in tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Tokens of `ids`; ids outside the added vocabulary become "<id:N>" so a parser can report them."""
        return [self.id_to_token(i) or f"<id:{int(i)}>" for i in ids]
