"""v2's visual prompts: every kind becomes a mask, and a region vector that reads its own image where it points."""

import numpy as np
import pytest
import torch

from visionllm.models.v2.regions import RegionEncoder, RegionError, RegionPrompt, prompt_mask

SIZE = (64, 48)  # (W, H)


@pytest.mark.parametrize(
    ("prompt", "inside", "outside"),
    [
        (RegionPrompt("point", [20, 10]), [(20, 10)], [(40, 30), (20, 20)]),
        (RegionPrompt("box", [10, 5, 30, 25]), [(10, 5), (29, 24), (20, 15)], [(35, 15), (20, 30), (30, 25)]),
        (RegionPrompt("scribble", [[5, 40], [60, 40]]), [(5, 40), (30, 40), (60, 40)], [(30, 30), (30, 5)]),
        (RegionPrompt("polygon", [[10, 10], [50, 10], [30, 40]]), [(30, 20), (30, 12)], [(12, 35), (50, 40)]),
    ],
)
def test_every_prompt_kind_marks_where_it_points(prompt, inside, outside):
    mask = prompt_mask(prompt, SIZE)
    assert mask.shape == (48, 64) and mask.dtype == bool
    assert all(mask[y, x] for x, y in inside) and not any(mask[y, x] for x, y in outside)


def test_a_mask_prompt_passes_through_and_bad_prompts_are_refused_by_name():
    given = np.zeros((48, 64), np.uint8)
    given[3:7, 9:12] = 255
    assert (prompt_mask(RegionPrompt("mask", given), SIZE) == (given > 0)).all()
    for prompt, words in [
        (RegionPrompt("mask", np.zeros((48, 64))), "marks no pixel"),
        (RegionPrompt("mask", np.ones((10, 10))), "must be 48x64"),
        (RegionPrompt("point", [500, 500]), "marks no pixel"),
        (RegionPrompt("point", [1, 2, 3]), "[x, y]"),
        (RegionPrompt("box", [30, 5, 10, 25]), "x1 <= x2"),
        (RegionPrompt("polygon", [[1, 1], [5, 5]]), "at least 3"),
        (RegionPrompt("scribble", [[1, float("nan")], [5, 5]]), "not finite"),
    ]:
        with pytest.raises(RegionError, match=words):
            prompt_mask(prompt, SIZE)
    with pytest.raises(RegionError, match="unknown prompt kind"):
        RegionPrompt("lasso", [])


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return RegionEncoder(vision_width=24, llm_width=32, patch=8, num_points=16)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, 64, 64, generator=g)
    levels = [torch.randn(2, 8, 8, 24, generator=g) for _ in range(4)]
    masks = torch.zeros(3, 64, 64)
    masks[0, :16, :16] = 1
    masks[1, 40:, 40:] = 1
    masks[2, 40:, 40:] = 1
    return pixels, masks, torch.tensor([0, 0, 1]), levels


def test_region_vectors_read_their_own_image_where_the_mask_is(encoder):
    pixels, masks, index, levels = inputs()
    out = encoder(pixels, masks, index, levels)
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # same image, other place
    assert not torch.allclose(out[1], out[2])  # same place, other image
    levels[0][1] += 5.0  # a layer the region does not read (it reads the last three)
    pixels2 = pixels.clone()
    pixels2[1] += 1.0  # another image than regions 0 and 1
    again = encoder(pixels2, masks, index, levels)
    assert torch.allclose(again[:2], out[:2], atol=1e-6) and not torch.allclose(again[2], out[2])
    again.sum().backward()
    assert encoder.mask_stack[0].weight.grad.abs().sum() > 0 and encoder.proj[0].weight.grad.abs().sum() > 0


def test_an_empty_region_is_a_clear_error_never_a_nan(encoder):
    pixels, masks, index, levels = inputs()
    masks[1] = 0
    with pytest.raises(RegionError, match="mask is empty"):
        encoder(pixels, masks, index, levels)
    assert encoder(pixels, masks[:0], index[:0], levels).shape == (0, 32)
