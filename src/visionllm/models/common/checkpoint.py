"""Checkpoint folders, whatever the model version: `config.json` (with its `model_type`), weights, tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoTokenizer

from visionllm.config import ConfigError

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


def read_config(folder: Path, config_class: type):
    """A checkpoint's config as `config_class`, or a `CheckpointError` that names the file and what is wrong."""
    try:
        return config_class.from_dict(read_config_data(folder))
    except ConfigError as error:
        raise CheckpointError(f"{folder / CONFIG_NAME}: {error}") from None


def read_tokenizer(folder: Path):
    """A checkpoint's tokenizer (`tokenizer/`), or a `CheckpointError` naming the folder."""
    try:
        return AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR))
    except Exception as error:  # tokenizers raises plain Exceptions for damaged files
        raise CheckpointError(
            f"{folder / TOKENIZER_DIR} cannot be loaded ({one_line(error)}): the tokenizer files are damaged; "
            "copy the checkpoint again"
        ) from None


def one_line(error: BaseException) -> str:
    """An exception's message on one line (some libraries spread theirs over many)."""
    return " ".join(str(error).split()) or type(error).__name__


def shared_names(state: dict[str, Tensor]) -> list[str]:
    """Names of tensors that share storage with an earlier one (tied weights), to save once."""
    seen: set[int] = set()
    shared = []
    for name, tensor in state.items():
        if tensor.numel() and tensor.data_ptr() in seen:
            shared.append(name)
        seen.add(tensor.data_ptr())
    return shared


def write_weights(
    folder: Path,
    model: nn.Module,
    skip: set[str] = frozenset(),
    dtype: torch.dtype | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
):
    """Write `model.safetensors` atomically: every tensor but those in `skip` (weights a named source provides)
    and the second names of tied ones, floating tensors in `dtype` when given. `state_dict`: the tensors to write
    instead of the module's own (the full weights gathered from the processes of a sharded run)."""
    state = {}
    for name, tensor in (model.state_dict() if state_dict is None else state_dict).items():
        if name in skip:
            continue
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor.contiguous()
    shared = shared_names(state)
    for name in shared:
        state.pop(name)
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    save_file(
        state, str(tmp), metadata={"format": "pt", "referenced": json.dumps(sorted(skip)), "tied": json.dumps(shared)}
    )
    tmp.chmod(0o644)  # safetensors writes 0600; a checkpoint is meant to be shared
    tmp.replace(folder / WEIGHTS_NAME)


def read_weights(folder: Path, model: nn.Module, provided: set[str] = frozenset(), strict: bool = True) -> list[str]:
    """Load `model.safetensors` into `model`; tensors in `provided` (loaded from their source) and tied second
    names may be absent; with `strict=False` any of the model's tensors may be (parts the checkpoint predates).

    Returns:
        The model's tensors the file did not have (besides `provided` and tied names).

    Raises:
        CheckpointError: a damaged file, or weights that do not match the model its config.json describes.
    """
    path = folder / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for truncated or damaged files
        raise CheckpointError(
            f"{path} cannot be read ({one_line(error)}): the file is damaged or cut short; copy the checkpoint again"
        ) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not match its config.json: {one_line(error)[:300]}") from None
    bad_missing = sorted(set(missing) - set(provided) - set(shared_names(model.state_dict())))
    if (bad_missing and strict) or unexpected:
        raise CheckpointError(
            f"{path} does not match its config: missing {bad_missing[:5]}, unexpected {unexpected[:5]}"
        )
    return bad_missing


def load_renamed(
    module: nn.Module, folder: str | Path, names: tuple[tuple[str, str], ...], option: str
) -> tuple[list[str], list[str]]:
    """Start `module` from another model's trained weights: each tensor of `folder`'s model.safetensors whose name
    begins with one of `names`' prefixes (the first that matches) is renamed to the module's prefix and loaded
    where the module has a tensor of that name and shape.

    Args:
        option: the config option that named the folder (for the errors).

    Returns:
        The names of the module's tensors loaded, and of those left as they were.

    Raises:
        CheckpointError: no readable model.safetensors in `folder`, or nothing in it fits the module.
    """
    path = Path(folder) / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except Exception as error:  # a missing file, or safetensors' own error for a damaged one
        raise CheckpointError(
            f"{option}: {path} cannot be read ({one_line(error)}); name a VisionLLM v1 model folder"
        ) from None
    own = module.state_dict()
    found = {}
    for name, tensor in state.items():
        for prefix, mine in names:
            if name.startswith(prefix):
                target = mine + name[len(prefix) :]
                if target in own and own[target].shape == tensor.shape:
                    found[target] = tensor
                break
    if not found:
        raise CheckpointError(f"{option}: nothing in {path} fits: names or shapes differ")
    module.load_state_dict(found, strict=False)
    return sorted(found), sorted(set(own) - set(found))
