"""The generation and editing decoders: the condition mapper, the denoising loss, DDIM sampling with guidance, the
Stable Diffusion layout and loading, and a model that learns to draw what a handful of prompts ask for."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from visionllm.config import ConfigError, build
from visionllm.formats.task_table import build_request
from visionllm.formats.tasks import Task
from visionllm.models.v2.chat import Turn
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.image_decoder import ConditionMapper, ImageDecoder, ImageDecoderConfig
from visionllm.models.v2.model import ChatExample, Targets, VisionLLMv2
from visionllm.models.v2.perception import image_answer
from visionllm.train.loop import load_run_config

from ..conftest import MICRO_IMAGE_DECODER, MICRO_V2

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def micro(editing: bool = False) -> ImageDecoder:
    torch.manual_seed(0)
    config = build(ImageDecoderConfig, copy.deepcopy(MICRO_IMAGE_DECODER), "generation")
    return ImageDecoder(config, in_width=24, editing=editing).eval()


def count_unet_calls(decoder: ImageDecoder) -> list[int]:
    calls = [0]
    decoder.unet.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_the_mapper_turns_64_query_states_into_77_condition_tokens():
    mapper = ConditionMapper(in_width=24, width=16, tokens=77, layers=2, heads=2)
    out = mapper(torch.randn(3, 64, 24))
    assert out.shape == (3, 77, 16)
    out.sum().backward()
    assert mapper.queries.grad is not None and mapper.proj[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("editing", [False, True])
def test_forward_backward_of_both_decoders(editing):
    decoder = micro(editing).train()
    states = torch.randn(2, 64, 24, requires_grad=True)
    targets = torch.rand(2, 3, 16, 16) * 2 - 1
    sources = torch.rand(2, 3, 16, 16) * 2 - 1 if editing else None
    loss = decoder.loss(states, targets, sources)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert states.grad.abs().sum() > 0  # the LLM's queries learn from the image loss
    assert decoder.unet.conv_in.weight.shape[1] == (6 if editing else 3)  # the source concatenated
    assert all(p.grad is not None for p in decoder.unet.parameters() if p.requires_grad)


def test_an_editing_decoder_refuses_to_run_without_the_source():
    decoder = micro(editing=True)
    with pytest.raises(ValueError, match="source"):
        decoder.loss(torch.randn(1, 64, 24), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="images to edit"):
        decoder.sample(torch.randn(1, 64, 24), [0])


def test_the_same_seed_gives_the_same_image_and_another_seed_another():
    decoder = micro()
    states = torch.randn(1, 64, 24)
    first, again, other = (decoder.sample(states, [seed]) for seed in (5, 5, 6))
    assert first.shape == (1, 3, 16, 16) and first.abs().max() <= 1
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_a_batch_equals_its_images_made_one_at_a_time():
    decoder = micro(editing=True)
    states, sources = torch.randn(3, 64, 24), torch.rand(3, 3, 16, 16) * 2 - 1
    batched = decoder.sample(states, [7, 7, 8], sources)
    alone = torch.cat([decoder.sample(states[k : k + 1], [s], sources[k : k + 1]) for k, s in enumerate([7, 7, 8])])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_guidance_one_is_the_unguided_path_in_one_pass_a_step():
    decoder = micro()
    calls = count_unet_calls(decoder)
    states = torch.randn(2, 64, 24)
    plain = decoder.sample(states, [1, 2], guidance=1.0, steps=4)
    assert calls[0] == 4  # the conditioned pass alone
    nearly = decoder.sample(states, [1, 2], guidance=1.0 + 1e-6, steps=4)  # the guided formula, two passes a step
    assert calls[0] == 8
    assert torch.allclose(plain, nearly, atol=1e-4)
    guided = decoder.sample(states, [1, 2], guidance=4.0, steps=4)
    assert not torch.allclose(plain, guided, atol=1e-3)


def test_editing_runs_the_passes_its_two_scales_need():
    decoder = micro(editing=True)
    calls = count_unet_calls(decoder)
    states, sources = torch.randn(1, 64, 24), torch.zeros(1, 3, 16, 16)
    plain = decoder.sample(states, [0], sources, steps=2, guidance=1.0, image_guidance=1.0)
    assert calls[0] == 2
    decoder.sample(states, [0], sources, steps=2, guidance=3.0, image_guidance=1.0)
    assert calls[0] == 2 + 2
    nearly = decoder.sample(states, [0], sources, steps=2, guidance=1.0 + 1e-6, image_guidance=1.0 + 1e-6)
    assert calls[0] == 4 + 2
    assert torch.allclose(plain, nearly, atol=1e-4)


def with_settings(editing: bool = False, **settings) -> ImageDecoder:
    torch.manual_seed(0)
    config = build(ImageDecoderConfig, {**copy.deepcopy(MICRO_IMAGE_DECODER), **settings}, "generation")
    return ImageDecoder(config, in_width=24, editing=editing).train()


def drawn_timesteps(decoder: ImageDecoder, n: int = 512) -> torch.Tensor:
    seen = []
    decoder.unet.register_forward_pre_hook(lambda _, args: seen.append(args[1]))
    decoder.loss(torch.randn(n, 64, 24), torch.zeros(n, 3, 16, 16))
    return seen[0].float() / decoder.config.train_timesteps


def test_noise_bias_draws_more_of_the_high_noise_timesteps():
    uniform, biased = drawn_timesteps(with_settings()), drawn_timesteps(with_settings(noise_bias=2.0))
    assert 0.43 < uniform.mean() < 0.57  # uniform over [0, 1)
    assert 0.68 < biased.mean() < 0.82  # density ~ t^2: mean 3/4
    assert biased.max() < 1 and biased.min() >= 0


def test_changed_weight_weighs_the_pixels_an_edit_changes():
    sources = torch.full((4, 3, 16, 16), -0.5)
    targets = sources.clone()
    targets[:, 0, 4:8, 4:8] = 0.9  # the edit: a reddened square
    losses = []
    for weight in (0.0, 4.0):
        decoder = with_settings(editing=True, prediction_type="sample", changed_weight=weight)
        decoder._denoise = lambda noisy, t, condition, source: sources.clone()  # a decoder that copies its source
        losses.append(decoder.loss(torch.randn(4, 64, 24), targets, sources).item())
    assert losses[0] > 0  # copying misses the edit ...
    assert losses[1] == pytest.approx(5 * losses[0], rel=1e-5)  # ... and the edit's pixels weigh 1 + 4


def test_standardize_condition_keeps_what_differs_between_prompts():
    states = torch.randn(16, 64, 24)
    spread = []
    for standardize in (False, True):
        decoder = with_settings(standardize_condition=standardize)
        condition = decoder.condition(states)  # training mode: the running statistics of this batch
        spread.append((condition - condition.mean(0)).norm() / condition.norm())
    assert spread[0] < 0.5  # a fresh mapper's condition is mostly the part every prompt shares ...
    assert spread[1] > 0.95  # ... standardized, it is what tells one prompt from another


def test_scale_shift_conditions_every_residual_block_by_scale_and_shift():
    decoder = with_settings(unet={**MICRO_IMAGE_DECODER["unet"], "scale_shift": True})
    block = decoder.unet.down_blocks[0].resnets[0]
    assert block.time_embedding_norm == "scale_shift"
    assert block.time_emb_proj.out_features == 2 * block.out_channels
    decoder.loss(torch.randn(2, 64, 24), torch.zeros(2, 3, 16, 16)).backward()
    assert block.time_emb_proj.weight.grad.abs().sum() > 0


def test_bad_decoder_configs_are_refused():
    with pytest.raises(ConfigError, match="beta_schedule"):
        ImageDecoderConfig(beta_schedule="cosine")
    with pytest.raises(ConfigError, match="multiple of"):
        ImageDecoderConfig(image_size=100, latent=False)
    with pytest.raises(ConfigError, match="noise_bias"):
        ImageDecoderConfig(noise_bias=-1.0)
    with pytest.raises(ConfigError, match="routes"):
        VisionLLMv2Config.from_dict({**copy.deepcopy(MICRO_V2), "link": {"routes": ["[DET]", "[GEN]"]}})


def test_the_paper_preset_has_stable_diffusion_15s_unet_and_autoencoder():
    config, _ = load_run_config(CONFIGS / "paper_v2.yaml")
    assert config.generation is not None and config.generation.width == 768 and config.generation.latent
    with torch.device("meta"):
        generation = ImageDecoder(config.generation, in_width=4096, load_weights=False)
        editing = ImageDecoder(config.editing, in_width=4096, editing=True, load_weights=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(generation.unet) == 859_520_964  # Stable Diffusion 1.5's UNet
    assert count(generation.autoencoder) == 83_653_863  # and its autoencoder
    assert count(editing.unet) == 859_520_964 + 4 * 320 * 9  # InstructPix2Pix: 4 more input channels
    assert generation.condition(torch.zeros(1, 64, 4096, device="meta")).shape == (1, 77, 768)


def test_a_stable_diffusion_folder_loads_and_an_editing_unet_gains_zeroed_source_channels(tmp_path, caplog):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    )  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4)  # fmt: skip
    unet.save_pretrained(tmp_path / "unet")
    vae.save_pretrained(tmp_path / "vae")
    config = ImageDecoderConfig(image_size=16, pretrained=str(tmp_path), width=16, mapper_heads=2)
    with caplog.at_level("INFO"):
        generation = ImageDecoder(config, in_width=24)
        editing = ImageDecoder(config, in_width=24, editing=True)
    assert "loaded from" in caplog.text and "mapper starts fresh" in caplog.text
    assert torch.equal(generation.unet.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(editing.unet.conv_in.weight[:, :4], unet.conv_in.weight)
    assert editing.unet.conv_in.weight[:, 4:].abs().sum() == 0  # the source starts without effect
    out = editing.sample(torch.randn(1, 64, 24), [0], torch.zeros(1, 3, 16, 16), steps=2)
    assert out.shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"no unet/config\.json"):
        ImageDecoder(ImageDecoderConfig(pretrained=str(tmp_path / "missing")), in_width=24)


def solid(rgb) -> torch.Tensor:
    return (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1).expand(3, 16, 16).clone()


@pytest.mark.slow
def test_the_model_learns_to_draw_what_a_handful_of_prompts_ask_for():
    """Overfit: four prompts, each a plain image of its colour; after training as the stages do (every part, then
    the decoder alone), each prompt's image is nearest its own colour (the LLM's [GEN] queries carry which prompt
    it was)."""
    torch.manual_seed(0)
    config = VisionLLMv2Config.from_dict(copy.deepcopy(MICRO_V2))
    config.generation.condition_dropout = 0.0
    config.generation.prediction_type = "sample"  # a plain image is learnt in few steps as x0
    config.generation.snr_gamma = None
    model = VisionLLMv2(config).train()
    colors = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 215, 40)}
    requests = {name: build_request(Task.GENERATION, description=f"a {name} square") for name in colors}
    examples = [
        ChatExample(
            None,
            (Turn("user", requests[name]), Turn("assistant", image_answer(f"a {name} square", "[GEN]"))),
            (),
            Targets(image=solid(rgb)),
        )
        for name, rgb in colors.items()
    ]
    batch = model.collate(examples * 4)
    for steps, trained in ((100, model), (300, model.generation_decoder)):
        model.requires_grad_(False)
        trained.requires_grad_(True)
        optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=3e-3)
        for _ in range(steps):
            loss = model(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    made = model.text_to_image([f"a {name} square" for name in colors], steps=10, guidance=1.0)
    palette = np.array(list(colors.values()), dtype=np.float64)
    for k, image in enumerate(made):
        mean = image.pixels.reshape(-1, 3).mean(0)
        assert int(np.argmin(((palette - mean) ** 2).sum(1))) == k, (list(colors)[k], mean)
    reply = model.chat(None, [Turn("user", requests["red"])], steps=10, guidance=1.0)
    assert reply.text.endswith("square [GEN]") and len(reply.images) == 1  # the chat's answer draws too
