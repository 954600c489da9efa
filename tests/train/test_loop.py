import copy

import pytest
import torch

from visionllm.config import ConfigError
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.v1.batch import Example, collate
from visionllm.train.loop import (
    OptimConfig,
    TrainConfig,
    _initial_model,
    _param_groups,
    apply_freeze,
    load_run_config,
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
    model = _initial_model(TrainConfig(init_from=str(tmp_path / "stage1")), ours)
    assert model.config.decoder.default_evidence == "top1" and model.decoder.config.evidence_scale == 4.0
    for name, value in micro_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    ours.decoder.coord_range = 48  # sizes the location vocabulary: not a stage's to change
    with pytest.raises(ConfigError, match="coord_range"):
        _initial_model(TrainConfig(init_from=str(tmp_path / "stage1")), ours)


def test_a_frozen_visual_part_runs_without_a_graph_and_without_its_loss(micro_model, images):
    model = copy.deepcopy(micro_model).train()
    apply_freeze(model, ["backbone", "tokenizer", "text_encoder"])
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
