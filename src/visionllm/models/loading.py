"""Load any checkpoint folder: its config.json's `model_type` names the model class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from visionllm.models.common.checkpoint import CheckpointError, read_config_data
from visionllm.models.v1.model import VisionLLM
from visionllm.models.v2.model import VisionLLMv2

MODEL_CLASSES: dict[str, Any] = {"visionllm-v1": VisionLLM, "visionllm-v2": VisionLLMv2}
"""Each `model_type` a checkpoint may declare, and the class that loads it."""


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> Any:
    """The model saved in `folder`, whatever its version.

    Raises:
        CheckpointError: not a checkpoint folder, a damaged one, or a `model_type` this version does not know.
    """
    data = read_config_data(folder)
    model_type = data.get("model_type", "visionllm-v1")
    model_class = MODEL_CLASSES.get(model_type) if isinstance(model_type, str) else None
    if model_class is None:
        known = ", ".join(sorted(MODEL_CLASSES))
        raise CheckpointError(
            f"{Path(folder) / 'config.json'}: model_type {model_type!r} is not one this version of visionllm loads "
            f"({known}); upgrade visionllm or check the folder"
        )
    return model_class.from_pretrained(folder, device)
