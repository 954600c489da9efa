import os
from pathlib import Path

import pytest
import yaml

import visionllm.train.loop as loop


@pytest.fixture
def write_preset():
    """`_write_preset`: a micro training preset's file."""
    return _write_preset


def _write_preset(model: dict, tmp_path: Path, data_root: Path, name: str, **train_extra) -> Path:
    """A micro training preset over a ShapesWorld folder: 6 steps of 2, logged every step, no evaluation
    (`train_extra` overrides or adds `train:` keys)."""
    section = {
        "output_dir": str(tmp_path / name),
        "data": {"root": str(data_root), "train": 6, "val": 4, "image_size": 64, "seed": 1},
        "batch_size": 2,
        "max_steps": 6,
        "log_every": 1,
        "save_every": 5,
        "eval_every": 0,
        "mixed_precision": "no",
        "optim": {"warmup_steps": 2},
        **train_extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"model": model, "train": section}))
    return path


@pytest.fixture
def signal_at(monkeypatch):
    """`signal_at(step, number)`: send this process `number` while step `step` is being logged (as if it arrived
    mid-run); `monkeypatch.undo()` disarms it."""

    def arm(step: int, number: int) -> None:
        append = loop._append

        def sending(path, record):
            append(path, record)
            if record.get("step") == step and "loss" in record:
                os.kill(os.getpid(), number)

        monkeypatch.setattr(loop, "_append", sending)

    return arm
