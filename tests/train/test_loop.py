import pytest

from visionllm.train.loop import OptimConfig, _param_groups


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
