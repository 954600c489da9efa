"""Training on 2 processes (torchrun, gloo on CPU) follows the 1-process run with the same global batch: the same
batches (each process takes its share), the same loss at every step and the same weights at the end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visionllm.train.loop import train


def _preset(write_preset, model: dict, tmp_path: Path, world: Path, name: str) -> Path:
    # 4 steps of 4, detection and a text task: the box, slot and answer losses all take part
    mix = {"tasks": {"detection": 1.0, "caption": 0.5}}
    extra = {"batch_size": 4, "max_steps": 4, "save_every": 100, "mix": mix, "freeze": ["backbone", "text_encoder"]}
    return write_preset(model, tmp_path, world, name, **extra)


def _losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_two_processes_follow_one_with_the_same_global_batch(tmp_path, tiny_shapesworld, micro_model, write_preset):
    model = micro_model.config.to_dict()
    one = train(_preset(write_preset, model, tmp_path, tiny_shapesworld.root, "one"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    preset = _preset(write_preset, model, tmp_path, tiny_shapesworld.root, "two")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547"]
    command = [*launch, "-m", "visionllm.cli", "train", "--config", str(preset)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("final model:") == 1  # the main process reports
    alone, shared = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [r["step"] for r in shared] == [1, 2, 3, 4]
    for a, b in zip(alone, shared, strict=True):
        for key in ("loss", "tokenizer", "text", "slots"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-3), (a["step"], key)
    assert any(r["slots"] > 0 for r in alone) and any(r["slots"] == 0 for r in alone)  # both kinds of batch ran
    first, second = load_file(str(one / "model.safetensors")), load_file(str(tmp_path / "two/final/model.safetensors"))
    assert first.keys() == second.keys()
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, rtol=1e-4, atol=1e-5, msg=name)
