"""VisionLLM v2's config: its parts, read from the `model:` section of a v2 preset (`model_type: visionllm-v2`).

Shared pieces come from `visionllm.config` (the LLM's layout, the config builder that refuses unknown keys and
wrong types); the v2 parts are its own: the CLIP vision encoder (`VisionConfig`), the region encoder, the super
links. The decoders' sections join as they land.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionllm.config import ConfigError, LLMConfig, build
from visionllm.formats.tokens import CodecConfig
from visionllm.models.v2.image_decoder import ImageDecoderConfig
from visionllm.models.v2.keypoint_decoder import KeypointDecoderConfig
from visionllm.models.v2.object_decoder import ObjectDecoderConfig
from visionllm.models.v2.patch_labels import PatchLabelConfig
from visionllm.models.v2.superlink import ROUTES
from visionllm.models.v2.vision import VisionConfig


@dataclass
class RegionConfig:
    """The region encoder (visual prompts).

    Attributes:
        num_points: points sampled inside a region's mask.
    """

    num_points: int = 32

    def __post_init__(self) -> None:
        if self.num_points < 1:
            raise ConfigError("regions.num_points must be at least 1")


@dataclass
class SuperLinkConfig:
    """Routing tokens and their queries.

    Attributes:
        routes: the routing tokens this model writes (a subset of [DET] [GRD] [SEG] [POSE] [GEN] [EDIT]).
    """

    routes: list[str] = field(default_factory=lambda: ["[DET]", "[GRD]", "[SEG]", "[POSE]"])

    def __post_init__(self) -> None:
        unknown = sorted(set(self.routes) - set(ROUTES))
        if unknown:
            raise ConfigError(f"link.routes: unknown routing token(s) {unknown}; routes: {list(ROUTES)}")


@dataclass
class VisionLLMv2Config:
    """Every part of VisionLLM v2 (defaults: the paper's CLIP ViT-L/14-336 and a Vicuna-7B layout).

    Attributes:
        vision: the CLIP vision encoder.
        llm: the chat LLM (Vicuna-7B v1.5 in the paper: the LLaMA-7B layout).
        regions: the visual-prompt encoder.
        link: the super links.
        objects: the object decoder ([DET] [GRD] [SEG]); None: a chat model without it.
        keypoints: the keypoint decoder ([POSE]; it reads the object decoder's instances); None: without it.
        generation: the text-to-image decoder ([GEN]); None: without it.
        editing: the instruction-editing decoder ([EDIT]); None: without it.
        patch_labels: a training aid for an encoder learned from scratch (`patch_labels` module); None: without.
        decoder_loss_weight: weight of the decoders' losses beside the text loss.
        max_new_tokens: longest generated reply.
        max_prompt_tokens: longest conversation accepted, in LLM tokens without the image's.
        model_type: "visionllm-v2".
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    regions: RegionConfig = field(default_factory=RegionConfig)
    link: SuperLinkConfig = field(default_factory=SuperLinkConfig)
    objects: ObjectDecoderConfig | None = field(default_factory=ObjectDecoderConfig)
    keypoints: KeypointDecoderConfig | None = field(default_factory=KeypointDecoderConfig)
    generation: ImageDecoderConfig | None = None
    editing: ImageDecoderConfig | None = None
    patch_labels: PatchLabelConfig | None = None
    decoder_loss_weight: float = 1.0
    max_new_tokens: int = 256
    max_prompt_tokens: int = 2048
    model_type: str = "visionllm-v2"

    def __post_init__(self) -> None:
        if self.model_type != "visionllm-v2":
            raise ConfigError(f"model_type must be 'visionllm-v2', not {self.model_type!r}")
        if self.max_new_tokens < 1 or self.max_prompt_tokens < 1:
            raise ConfigError("max_new_tokens and max_prompt_tokens must be at least 1")
        if self.keypoints is not None and self.objects is None:
            raise ConfigError("keypoints: the keypoint decoder reads the object decoder's instances; set objects too")
        for route, decoder in (("[GEN]", "generation"), ("[EDIT]", "editing")):
            if (getattr(self, decoder) is not None) != (route in self.link.routes):
                raise ConfigError(
                    f"{decoder}: a model with the {decoder} decoder routes {route} (link.routes), and only such a model"
                )

    @property
    def image_size(self) -> int:
        """The side images are read at (the vision encoder's)."""
        return self.vision.image_size

    def codec(self) -> CodecConfig:
        """The codec sizes instructions are rendered with (v2 answers through decoders, so the defaults)."""
        return CodecConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionLLMv2Config:
        return build(cls, data, "model")
