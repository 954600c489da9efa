import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from visionllm.config import ConfigError
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.v1.batch import Example, collate
from visionllm.models.v1.model import VisionLLM
from visionllm.train.loop import (
    OptimConfig,
    TrainConfig,
    UnsafeCheckpointError,
    _accelerator,
    _load_state,
    _param_groups,
    _save_state,
    _trim_log,
    load_run_config,
    load_training_state,
    train,
)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_param_groups_scale_the_visual_part_and_skip_decay_on_norms(micro_model, scale):
    optim = OptimConfig(lr=1e-3, weight_decay=0.05, visual_lr_scale=scale)
    groups = _param_groups(micro_model, optim)
    names = {id(p): n for n, p in micro_model.named_parameters()}
    seen = 0
    for group in groups:
        for param in group["params"]:
            name = names[id(param)]
            visual = name.startswith(("backbone.", "tokenizer."))
            assert group["lr"] == pytest.approx(1e-3 * (scale if visual else 1.0)), name
            assert (group["weight_decay"] == 0.0) == (param.ndim < 2 or "norm" in name or "embed" in name), name
            seen += 1
    assert seen == sum(p.requires_grad for p in micro_model.parameters())


def test_a_preset_refines_its_base_model_section(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model:\n  image_size: 96\n  decoder: {coord_range: 64, max_points: 20, nms_iou: 0.6}\n"
    )
    (tmp_path / "stage.yaml").write_text(
        "base: base.yaml\nmodel:\n  decoder: {default_evidence: top1}\ntrain: {max_steps: 3}\n"
    )
    model, train = load_run_config(tmp_path / "stage.yaml")
    assert (model.image_size, model.decoder.coord_range, model.decoder.max_points) == (96, 64, 20)
    assert model.decoder.nms_iou == 0.6 and model.decoder.default_evidence == "top1"
    assert train.max_steps == 3


def test_a_stage_decodes_with_its_own_settings_on_the_checkpoints_weights(micro_model, tmp_path):
    micro_model.save_pretrained(tmp_path / "stage1")
    ours = copy.deepcopy(micro_model.config)
    ours.decoder.default_evidence, ours.decoder.evidence_scale = "top1", 4.0
    model = VisionLLM.for_stage(ours, tmp_path / "stage1")
    assert model.config.decoder.default_evidence == "top1" and model.decoder.config.evidence_scale == 4.0
    for name, value in micro_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    ours.decoder.coord_range = 48  # sizes the location vocabulary: not a stage's to change
    with pytest.raises(ConfigError, match="coord_range"):
        VisionLLM.for_stage(ours, tmp_path / "stage1")


def test_a_frozen_visual_part_runs_without_a_graph_and_without_its_loss(micro_model, images):
    model = copy.deepcopy(micro_model).train()
    model.freeze(["backbone", "tokenizer", "text_encoder"])
    assert model.visual_frozen
    instruction = build_instruction(Task.CAPTION)
    example = Example(
        model.processor.image(images[0]), instruction.text, Task.CAPTION, instruction.output_format, answer="a star"
    )
    losses = model(collate([example], model.processor))
    assert losses["tokenizer"] == 0 and losses["text"] > 0
    losses["loss"].backward()
    assert all(p.grad is None for p in model.tokenizer.parameters())
    assert model.decoder.image_proj[0].weight.grad.abs().sum() > 0


class _RunsCode:
    """Unpickling this calls `Path.touch` on a marker: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_training_state_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"step": 3, "rng": _RunsCode(marker)}, tmp_path / "training_state.pt")
    with pytest.raises(UnsafeCheckpointError, match="could run code"):
        load_training_state(tmp_path / "training_state.pt")
    assert not marker.exists()


def test_the_training_state_restores_every_random_generator(micro_model, tmp_path):
    model = copy.deepcopy(micro_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # NumPy's cached Gaussian is part of its state
    _save_state(tmp_path, model, optimizer, scheduler, step=7, keep=2)
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    folder = tmp_path / "checkpoints" / "step-7"
    assert torch.load(folder / "training_state.pt", weights_only=True)["step"] == 7  # plain values only
    assert _load_state(folder, model, optimizer, scheduler) == (7, 0.0)
    again = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1])
    assert again[2:] == expected[2:]


def test_training_states_of_earlier_versions_still_resume(micro_model, tmp_path):
    # Earlier versions pickled NumPy's and Python's RNG states in their own tuple formats.
    model = copy.deepcopy(micro_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    _save_state(tmp_path, model, optimizer, scheduler, step=4, keep=1)
    folder = tmp_path / "checkpoints" / "step-4"
    state = torch.load(folder / "training_state.pt", weights_only=True)
    np.random.seed(5), random.seed(5)
    state["rng"]["numpy"], state["rng"]["python"] = np.random.get_state(), random.getstate()
    expected = (np.random.rand(2), random.random())
    torch.save(state, folder / "training_state.pt")
    np.random.seed(0), random.seed(0)
    assert _load_state(folder, model, optimizer, scheduler) == (4, 0.0)
    assert np.array_equal(np.random.rand(2), expected[0]) and random.random() == expected[1]


def test_a_resumed_run_logs_each_step_once(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"step": s, "loss": 1.0 / s} for s in range(20, 201, 20)] + [{"step": 100, "eval": {"box_AP": 0.1}}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 22')  # the last line cut short
    _trim_log(log, 100)  # resumed from the checkpoint of step 100
    kept = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in kept] == [20, 40, 60, 80, 100, 100]
    assert "eval" in kept[-1]


@pytest.mark.parametrize("steps", [0, -1])
def test_a_run_needs_at_least_one_step(tmp_path, steps):
    with pytest.raises(ConfigError, match="max_steps must be at least 1"):
        TrainConfig(max_steps=steps)
    (tmp_path / "run.yaml").write_text("train: {max_steps: 5}\n")
    with pytest.raises(ConfigError, match="--max-steps must be at least 1"):
        train(tmp_path / "run.yaml", max_steps=steps)


def test_an_unknown_freeze_group_is_refused_before_any_data_is_written(tmp_path):
    data = tmp_path / "world"
    (tmp_path / "run.yaml").write_text(f"train: {{freeze: [eyes], data: {{root: {data}}}}}\n")
    with pytest.raises(ConfigError, match=r"train.freeze: unknown group\(s\) \['eyes'\]; groups: \['backbone'"):
        train(tmp_path / "run.yaml")
    assert not data.exists()


def test_stages_of_different_precision_run_one_after_another_in_one_process():
    assert _accelerator("bf16").mixed_precision == "bf16"
    assert _accelerator("no").mixed_precision == "no"  # accelerate keeps one state per process


@pytest.mark.parametrize("extra", [{"grad_accumulation": 2}, {"gradient_checkpointing": True}, {"num_workers": 1}])
def test_accumulation_checkpointing_and_workers_train_the_same_steps(
    tmp_path, tiny_shapesworld, micro_model, extra, write_preset
):
    def run(name: str, **more) -> list[dict]:
        settings = {"batch_size": 4, "max_steps": 3, "save_every": 100, "optim": {"warmup_steps": 1}}
        settings["mix"] = {"tasks": {"detection": 1.0}}
        train(write_preset(micro_model.config.to_dict(), tmp_path, tiny_shapesworld.root, name, **settings, **more))
        return [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]

    plain, other = run("plain"), run("other", **extra)
    assert [r["step"] for r in other] == [1, 2, 3]
    # the same examples: the first step's loss agrees (accumulation normalises its box losses per micro-batch)
    tolerance = 0.25 if "grad_accumulation" in extra else 1e-4
    assert other[0]["loss"] == pytest.approx(plain[0]["loss"], rel=tolerance)
