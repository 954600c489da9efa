"""A real (micro) training run stopped by a signal saves its step and resumes to the same weights; a non-finite
loss stops the run before it reaches the weights, or is skipped, as the config says."""

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import visionllm.train.loop as loop
from visionllm.cli import main
from visionllm.models.v1.model import VisionLLM
from visionllm.train.loop import NonFiniteLossError, TrainingInterrupted, train


@pytest.fixture
def preset(tmp_path, micro_model, write_preset):
    def write(tmp_path: Path, data_root: Path, name: str, **train_extra) -> Path:
        return write_preset(micro_model.config.to_dict(), tmp_path, data_root, name, **train_extra)

    return write


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"duplicate step records: {steps}"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_and_the_resumed_run_ends_where_an_uninterrupted_one_does(
    preset, tmp_path, tiny_shapesworld, monkeypatch, signal_at, number
):
    whole = train(preset(tmp_path, tiny_shapesworld.root, "whole"))
    stopped = preset(tmp_path, tiny_shapesworld.root, "stopped")
    before = signal.getsignal(number)
    signal_at(3, number)
    with pytest.raises(TrainingInterrupted) as caught:
        train(stopped)
    assert caught.value.step == 3 and caught.value.checkpoint.name == "step-3"
    assert signal.getsignal(number) == before  # the run's handlers are gone with it
    monkeypatch.undo()
    resumed = train(stopped, resume=True)
    assert losses(tmp_path / "stopped") == losses(tmp_path / "whole")
    ours, theirs = load_file(str(resumed / "model.safetensors")), load_file(str(whole / "model.safetensors"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_the_cli_reports_the_signal_and_how_to_resume(preset, tmp_path, tiny_shapesworld, signal_at, capsys):
    config = preset(tmp_path, tiny_shapesworld.root, "cli")
    signal_at(2, signal.SIGTERM)
    assert main(["train", "--config", str(config)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 2" in err and "--resume" in err
    assert (tmp_path / "cli" / "checkpoints" / "step-2" / "training_state.pt").exists()


def poison(monkeypatch, steps: set[int]) -> None:
    """Make the loss nan on the given (1-based) steps."""
    forward = VisionLLM.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in steps:
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    monkeypatch.setattr(VisionLLM, "forward", poisoned)


def test_a_nonfinite_loss_stops_the_run_before_it_reaches_the_weights(preset, tmp_path, tiny_shapesworld, monkeypatch):
    config = preset(tmp_path, tiny_shapesworld.root, "nan", save_every=2)
    poison(monkeypatch, {4})
    with pytest.raises(NonFiniteLossError, match=r"step 4: the loss or its gradient was not finite") as caught:
        train(config)
    assert "step-2" in str(caught.value) and "on_nonfinite_loss: skip" in str(caught.value)
    records = [json.loads(line) for line in (tmp_path / "nan" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4 and records[-1]["stopped"] and records[-1]["loss"] == "nan"


def test_skipped_nonfinite_steps_are_logged_and_the_weights_stay_finite(
    preset, tmp_path, tiny_shapesworld, monkeypatch
):
    config = preset(tmp_path, tiny_shapesworld.root, "skip", on_nonfinite_loss="skip")
    poison(monkeypatch, {2, 5})
    final = train(config)
    records = [json.loads(line) for line in (tmp_path / "skip" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "skipped" in r] == [2, 5]
    assert all(torch.isfinite(t).all() for t in load_file(str(final / "model.safetensors")).values())


def test_too_many_skipped_steps_in_a_row_end_the_run(preset, tmp_path, tiny_shapesworld, monkeypatch):
    monkeypatch.setattr(loop, "MAX_SKIPPED_IN_A_ROW", 3)
    config = preset(tmp_path, tiny_shapesworld.root, "diverged", on_nonfinite_loss="skip")
    poison(monkeypatch, {2, 3, 4, 5, 6})
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        train(config)
