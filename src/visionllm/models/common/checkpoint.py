"""Checkpoint folders, whatever the model version: `config.json` (with its `model_type`), weights, tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded."""


def read_config_data(folder: str | Path) -> dict:
    """The parsed `config.json` of a checkpoint folder.

    Raises:
        CheckpointError: no such folder or file, or a file that is not a JSON object.
    """
    path = Path(folder) / CONFIG_NAME
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder} is not a VisionLLM checkpoint: no such folder")
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a VisionLLM checkpoint: {CONFIG_NAME} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error}): the file is damaged; copy the checkpoint again"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object of config sections, got {type(data).__name__}")
    return data
