"""The generation and editing decoders: diffusion models conditioned on the 64 query states of [GEN] or [EDIT].

The LLM's 64 query states (64, D) pass a projection and a small transformer whose 77 learnable queries read them
(`ConditionMapper`): the 77 x width condition a Stable Diffusion UNet takes from its text encoder. The UNet
(diffusers `UNet2DConditionModel`) predicts the noise of a noisy image, in latent space through an `AutoencoderKL`
(Stable Diffusion 1.5) or in pixel space (the tiny preset, which measures cheaper on a CPU than training an
autoencoder as well). The editing decoder (InstructPix2Pix) is the same with the source image's latent concatenated
to the noisy latent (twice the input channels).

Training: noise-prediction MSE (min-SNR weighted, Hang et al. 2023), with the condition dropped for a share of
samples (and, for editing, the source image too), which classifier-free guidance needs. Sampling: DDIM with
guidance; each image's starting noise comes from its own seed, so a batch equals its images made one at a time.
Images are (B, 3, S, S) in [-1, 1] at `image_size`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from visionllm.config import ConfigError

logger = logging.getLogger(__name__)

CHANGED = 0.1
"""How far (in the [-1, 1] pixels' or the latents' units) a target differs from its source where an edit changed it."""


@dataclass
class UNetLayout:
    """A `UNet2DConditionModel`'s layout (defaults: Stable Diffusion 1.5's).

    Attributes:
        block_out_channels: channels of each resolution level, finest first.
        attention_levels: which levels have cross-attention (the others are plain residual blocks); the middle
            block always has it.
        layers_per_block: residual layers per level.
        attention_head_dim: width of each attention head.
        norm_num_groups: GroupNorm groups (divides every level's channels).
        pooled_condition: also pool the condition (attention pooling) into the timestep embedding, which every
            residual block reads, as SDXL adds its pooled text embedding (diffusers' `addition_embed_type="text"`).
            A small UNet with cross-attention only at its coarsest level hardly hears its condition otherwise.
        scale_shift: the timestep embedding (with the pooled condition) scales and shifts each residual block's
            normalized features (FiLM, as ADM does, Dhariwal & Nichol 2021) instead of being added to them.
    """

    block_out_channels: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280])
    attention_levels: list[bool] = field(default_factory=lambda: [True, True, True, False])
    layers_per_block: int = 2
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    pooled_condition: bool = False
    scale_shift: bool = False

    def __post_init__(self) -> None:
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ConfigError("unet.attention_levels needs one entry per level of unet.block_out_channels")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError("unet.norm_num_groups must divide every level's channels")


@dataclass
class AutoencoderLayout:
    """An `AutoencoderKL`'s layout (defaults: Stable Diffusion's; images downsample by 2^(levels - 1)).

    Attributes:
        block_out_channels: channels per level.
        latent_channels: channels of the latent.
        scaling_factor: latents are scaled by it for the UNet (0.18215 for SD 1.5).
    """

    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    latent_channels: int = 4
    scaling_factor: float = 0.18215


@dataclass
class ImageDecoderConfig:
    """A generation or editing decoder (defaults: Stable Diffusion 1.5 at 512 px, latent space).

    Attributes:
        image_size: side of the images made, in pixels.
        latent: True: diffusion over an `AutoencoderKL`'s latents (SD); False: over pixels.
        pretrained: a local Stable Diffusion folder in diffusers layout (unet/, vae/); its weights are loaded and
            the mapper starts fresh. None: random weights of the layouts below.
        unet: the UNet's layout (when not pretrained).
        autoencoder: the autoencoder's layout (latent decoders, when not pretrained).
        width: the condition's width (the UNet's cross-attention width: 768 for SD 1.5).
        condition_tokens: the condition's length (77, CLIP's text length in SD).
        mapper_layers, mapper_heads: the mapper's transformer.
        train_timesteps: diffusion steps of the noise schedule.
        beta_schedule: "scaled_linear" (SD) or "squaredcos_cap_v2" (a cosine schedule, better for small pixel
            images), as diffusers names them.
        prediction_type: what the UNet predicts: "epsilon" (SD), "v_prediction" or "sample".
        snr_gamma: min-SNR loss weighting's gamma; None: plain MSE.
        noise_bias: training timesteps are drawn with a density rising as t^noise_bias (0: uniform): more of
            the high-noise steps, where only the condition tells what the image is, and fewer of the low-noise
            ones, which a small UNet learns first from the noisy image alone.
        condition_dropout: share of training samples whose condition is dropped (classifier-free guidance).
        image_dropout: share whose source image is dropped (editing's image guidance).
        changed_weight: editing: the extra loss weight of the pixels (or latent cells) an edit changes, which
            are few: copying the source explains most of a plain loss and teaches nothing of the instruction.
        standardize_condition: standardize the mapper's output too, each (token, feature) by running statistics
            (`RunningStandardize`): a mapper's output is mostly the part every prompt shares (its learnable
            queries), and what tells prompts apart can sink below a part in a thousand of it, which the UNet
            then learns to ignore. A dropped condition is then the average one.
        steps: DDIM steps of sampling by default.
        guidance: text guidance scale by default (1.0: no guidance, one UNet pass per step).
        image_guidance: image guidance scale by default (editing).
    """

    image_size: int = 512
    latent: bool = True
    pretrained: str | None = None
    unet: UNetLayout = field(default_factory=UNetLayout)
    autoencoder: AutoencoderLayout = field(default_factory=AutoencoderLayout)
    width: int = 768
    condition_tokens: int = 77
    mapper_layers: int = 2
    mapper_heads: int = 8
    train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    snr_gamma: float | None = 5.0
    noise_bias: float = 0.0
    condition_dropout: float = 0.1
    image_dropout: float = 0.1
    changed_weight: float = 0.0
    standardize_condition: bool = False
    steps: int = 50
    guidance: float = 7.5
    image_guidance: float = 1.5

    def __post_init__(self) -> None:
        if self.beta_schedule not in ("scaled_linear", "linear", "squaredcos_cap_v2"):
            raise ConfigError(f"beta_schedule {self.beta_schedule!r}: scaled_linear, linear or squaredcos_cap_v2")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ConfigError(f"prediction_type {self.prediction_type!r}: epsilon, v_prediction or sample")
        if self.width % self.mapper_heads:
            raise ConfigError("mapper_heads must divide width")
        if not (0 <= self.condition_dropout < 1 and 0 <= self.image_dropout < 1):
            raise ConfigError("condition_dropout and image_dropout are shares in [0, 1)")
        if self.changed_weight < 0 or self.noise_bias < 0:
            raise ConfigError("changed_weight and noise_bias are at least 0")
        if self.steps < 1 or self.image_size < 8:
            raise ConfigError("steps must be at least 1 and image_size at least 8")
        factor = 2 ** (len(self.unet.block_out_channels) - 1)
        if self.latent:
            factor *= 2 ** (len(self.autoencoder.block_out_channels) - 1)
        if self.pretrained is None and self.image_size % factor:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of {factor} for these layouts")


class RunningStandardize(nn.Module):
    """Each (query, feature) of the routed states less its running mean, over its running deviation.

    The LLM's query states share a large component across prompts (their placeholder embeddings and positions)
    and differ in a small one: what the prompt asked for. Averaged by a fresh mapper's near-uniform attention,
    the shared part drowns the rest and the UNet learns to ignore its condition. Standardizing each query's
    features by statistics gathered in training (as batch normalization keeps them) leaves the part that
    differs. The statistics are buffers of the checkpoint; inference uses them as they are.
    """

    def __init__(self, tokens: int, width: int, momentum: float = 0.1, eps: float = 1e-10) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(tokens, width))
        self.register_buffer("var", torch.ones(tokens, width))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def forward(self, states: Tensor) -> Tensor:
        if states.shape[1:] != self.mean.shape:
            raise ValueError(f"the mapper reads {tuple(self.mean.shape)} query states, got {tuple(states.shape[1:])}")
        if self.training and len(states) > 1:
            with torch.no_grad():  # a plain average over the first batches, then a moving one
                rate = max(self.momentum, 1.0 / float(self.batches + 1))
                detached = states.detach().float()
                self.mean.lerp_(detached.mean(0), rate)
                self.var.lerp_(detached.var(0), rate)
                self.batches += 1
        standard = (states.float() - self.mean) * (self.var + self.eps).rsqrt()
        return standard.to(states.dtype)


class ConditionMapper(nn.Module):
    """The routed query states (B, Q, D) -> the UNet's condition (B, condition_tokens, width).

    The states are standardized (`RunningStandardize`), projected to `width`, then read by a small transformer
    decoder whose learnable queries attend to them (and to each other).
    """

    def __init__(
        self,
        in_width: int,
        width: int,
        tokens: int,
        layers: int,
        heads: int,
        in_tokens: int = 64,
        standardize_output: bool = False,
    ) -> None:
        super().__init__()
        self.standardize = RunningStandardize(in_tokens, in_width)
        self.standardize_output = RunningStandardize(tokens, width) if standardize_output else None
        self.proj = nn.Sequential(nn.Linear(in_width, width), nn.GELU(), nn.Linear(width, width))
        self.queries = nn.Parameter(torch.randn(tokens, width) * 0.02)
        layer = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)

    def forward(self, states: Tensor) -> Tensor:
        memory = self.proj(self.standardize(states))
        queries = self.queries.unsqueeze(0).expand(len(states), -1, -1).to(memory.dtype)
        condition = self.norm(self.transformer(queries, memory))
        return condition if self.standardize_output is None else self.standardize_output(condition)


class ImageDecoder(nn.Module):
    """A diffusion decoder of routed query states: text-to-image, or (`editing`) instruction editing.

    Args:
        config: the decoder's config.
        in_width: the LLM's width (the query states').
        editing: InstructPix2Pix: the source image's latent is concatenated to the noisy one.
        load_weights: load `config.pretrained` (False when a checkpoint follows).
        in_tokens: how many query states a call carries (the route family's queries).
    """

    def __init__(
        self,
        config: ImageDecoderConfig,
        in_width: int,
        editing: bool = False,
        load_weights: bool = True,
        in_tokens: int = 64,
    ):
        super().__init__()
        from diffusers import AutoencoderKL, UNet2DConditionModel  # diffusers loads slowly: only with a decoder

        self.config = config
        self.editing = editing
        self.mapper = ConditionMapper(
            in_width,
            config.width,
            config.condition_tokens,
            config.mapper_layers,
            config.mapper_heads,
            in_tokens,
            config.standardize_condition,
        )
        self.autoencoder = None
        if config.pretrained:
            self.unet, self.autoencoder = self._pretrained(Path(config.pretrained), load_weights)
        else:
            channels = config.autoencoder.latent_channels if config.latent else 3
            unet = config.unet
            down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in unet.attention_levels]
            up = [name.replace("Down", "Up") for name in reversed(down)]
            self.unet = UNet2DConditionModel(
                sample_size=self.latent_size,
                in_channels=2 * channels if editing else channels,
                out_channels=channels,
                block_out_channels=tuple(unet.block_out_channels),
                down_block_types=tuple(down),
                up_block_types=tuple(up),
                layers_per_block=unet.layers_per_block,
                cross_attention_dim=config.width,
                attention_head_dim=unet.attention_head_dim,
                norm_num_groups=unet.norm_num_groups,
                addition_embed_type="text" if unet.pooled_condition else None,
                addition_embed_type_num_heads=config.mapper_heads,
                resnet_time_scale_shift="scale_shift" if unet.scale_shift else "default",
            )
            if config.latent:
                levels = config.autoencoder.block_out_channels
                self.autoencoder = AutoencoderKL(
                    in_channels=3,
                    out_channels=3,
                    down_block_types=("DownEncoderBlock2D",) * len(levels),
                    up_block_types=("UpDecoderBlock2D",) * len(levels),
                    block_out_channels=tuple(levels),
                    latent_channels=channels,
                    layers_per_block=2,
                    scaling_factor=config.autoencoder.scaling_factor,
                )
        if self.autoencoder is not None:  # as in Stable Diffusion, the autoencoder is not trained with the UNet
            self.autoencoder.requires_grad_(False)
        self.register_buffer("alphas_cumprod", self._schedule().alphas_cumprod.float(), persistent=False)

    @property
    def latent_size(self) -> int:
        """The side of what the UNet denoises (the autoencoder's downsampling of `image_size`)."""
        if self.autoencoder is not None:
            return self.config.image_size // 2 ** (len(self.autoencoder.config.block_out_channels) - 1)
        if self.config.latent and self.config.pretrained is None:  # while the autoencoder is being built
            return self.config.image_size // 2 ** (len(self.config.autoencoder.block_out_channels) - 1)
        return self.config.image_size

    def _pretrained(self, folder: Path, load_weights: bool) -> tuple[nn.Module, nn.Module | None]:
        """A Stable Diffusion folder's UNet and autoencoder; an editing decoder built on a 4-channel UNet gets the
        source latent's input channels, starting at zero (as InstructPix2Pix starts from SD)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        for part in ("unet", "vae"):
            if not (folder / part / "config.json").is_file():
                raise ConfigError(
                    f"{folder} is not a Stable Diffusion folder in diffusers layout: no {part}/config.json"
                )
        if load_weights:
            unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        else:
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        latent = vae.config.latent_channels
        if self.editing and unet.config.in_channels == latent:
            old = unet.conv_in
            conv = nn.Conv2d(2 * latent, old.out_channels, old.kernel_size, old.stride, old.padding)
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[:, :latent] = old.weight
                conv.bias.copy_(old.bias)
            unet.conv_in = conv
            unet.register_to_config(in_channels=2 * latent)
        if load_weights:
            logger.info(
                "%s decoder: UNet (%.0fM parameters) and autoencoder loaded from %s; the condition mapper starts fresh",
                "editing" if self.editing else "generation",
                sum(p.numel() for p in unet.parameters()) / 1e6,
                folder,
            )
        return unet, vae

    def _schedule(self, sampling: bool = False):
        from diffusers import DDIMScheduler, DDPMScheduler

        kind = DDIMScheduler if sampling else DDPMScheduler
        # sampling starts at the last training step ("trailing"), where the input is pure noise, as it is at
        # inference; "leading" spacing starts earlier, where a UNet expects some image left in its input
        # (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed")
        options = {"set_alpha_to_one": False, "timestep_spacing": "trailing"} if sampling else {}
        return kind(
            num_train_timesteps=self.config.train_timesteps,
            beta_schedule=self.config.beta_schedule,
            prediction_type=self.config.prediction_type,
            clip_sample=False,
            **options,
        )

    # -- images <-> what the UNet sees ---------------------------------------------------------

    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) images in [-1, 1] -> what the UNet denoises (latents, or the pixels themselves)."""
        if self.autoencoder is None:
            return images
        latents = self.autoencoder.encode(images.to(self.autoencoder.dtype)).latent_dist.mode()
        return latents * self.autoencoder.config.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """The inverse of `encode`, clamped to [-1, 1]."""
        if self.autoencoder is not None:
            latents = self.autoencoder.decode(latents / self.autoencoder.config.scaling_factor).sample
        return latents.clamp(-1, 1)

    def condition(self, states: Tensor) -> Tensor:
        """(B, Q, D) routed query states -> (B, condition_tokens, width)."""
        return self.mapper(states)

    def _denoise(self, noisy: Tensor, t: Tensor, condition: Tensor, source: Tensor | None) -> Tensor:
        if self.editing:
            assert source is not None
            noisy = torch.cat([noisy, source.to(noisy.dtype)], 1)
        return self.unet(noisy, t, encoder_hidden_states=condition.to(noisy.dtype)).sample

    # -- training ------------------------------------------------------------------------------

    def loss(self, states: Tensor, targets: Tensor, sources: Tensor | None = None) -> Tensor:
        """The denoising loss of B routed calls.

        Args:
            states: (B, Q, D) the calls' query states.
            targets: (B, 3, S, S) the images they should make, in [-1, 1].
            sources: (B, 3, S, S) the images to edit (editing decoders), in [-1, 1].
        """
        if self.editing and sources is None:
            raise ValueError("an editing decoder's loss needs the source images")
        condition = self.condition(states)
        b = len(targets)
        with torch.no_grad():
            clean = self.encode(targets)
            source = self.encode(sources) if self.editing else None
        changed = None  # the pixels an edit changes, before the source may be dropped below
        if source is not None and self.config.changed_weight:
            changed = (clean - source).abs().amax(1, keepdim=True) > CHANGED
        keep = (torch.rand(b, device=clean.device) >= self.config.condition_dropout).view(b, 1, 1)
        condition = condition * keep.to(condition.dtype)
        if source is not None:
            keep_image = (torch.rand(b, device=clean.device) >= self.config.image_dropout).view(b, 1, 1, 1)
            source = source * keep_image.to(source.dtype)
        noise = torch.randn_like(clean)
        steps = self.config.train_timesteps
        drawn = torch.rand(b, device=clean.device) ** (1 / (1 + self.config.noise_bias))
        t = (drawn * steps).long().clamp(max=steps - 1)
        alpha = self.alphas_cumprod.to(clean.device)[t].view(b, 1, 1, 1)
        noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
        predicted = self._denoise(noisy, t, condition, source).float()
        if self.config.prediction_type == "epsilon":
            wanted = noise
        elif self.config.prediction_type == "v_prediction":
            wanted = alpha.sqrt() * noise - (1 - alpha).sqrt() * clean
        else:
            wanted = clean
        error = F.mse_loss(predicted, wanted.float(), reduction="none")
        if changed is not None:
            error = error * (1 + self.config.changed_weight * changed.to(error.dtype))
        per_sample = error.mean((1, 2, 3))
        if self.config.snr_gamma is not None:
            snr = (alpha / (1 - alpha)).flatten()
            clipped = snr.clamp(max=self.config.snr_gamma)
            weight = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}
            per_sample = per_sample * weight[self.config.prediction_type]
        return per_sample.mean()

    # -- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        states: Tensor,
        seeds: Sequence[int],
        sources: Tensor | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        image_guidance: float | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Images for B routed calls, (B, 3, S, S) in [-1, 1].

        Args:
            states: (B, Q, D) the calls' query states.
            seeds: one per call: its starting noise (the same seed, the same image, batched or alone).
            sources: (B, 3, S, S) the images to edit, in [-1, 1] (editing decoders).
            steps: DDIM steps (default `config.steps`).
            guidance: text guidance scale; 1.0 runs the conditioned UNet alone (default `config.guidance`).
            image_guidance: editing's image guidance scale (default `config.image_guidance`).
            progress: show a progress bar over the steps.
        """
        if len(seeds) != len(states):
            raise ValueError(f"{len(states)} calls but {len(seeds)} seeds")
        if self.editing and sources is None:
            raise ValueError("an editing decoder needs the images to edit")
        guidance = self.config.guidance if guidance is None else guidance
        image_guidance = self.config.image_guidance if image_guidance is None else image_guidance
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        scheduler = self._schedule(sampling=True)
        scheduler.set_timesteps(steps or self.config.steps)
        device, dtype = states.device, next(self.unet.parameters()).dtype
        condition = self.condition(states.to(dtype))
        null = torch.zeros_like(condition)
        source = self.encode(sources.to(device, dtype)) if self.editing else None
        channels = self.unet.config.out_channels
        shape = (channels, self.latent_size, self.latent_size)
        latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        latents = latents.to(device, dtype) * scheduler.init_noise_sigma
        # The passes each step needs: (condition, source) pairs; 1.0 scales need no unguided pass.
        passes = [(condition, source)]
        if self.editing:
            assert source is not None
            if guidance != 1.0 or image_guidance != 1.0:
                passes.append((null, source))
            if image_guidance != 1.0:
                passes.append((null, torch.zeros_like(source)))
        elif guidance != 1.0:
            passes.append((null, None))
        b = len(latents)
        for t in tqdm(scheduler.timesteps, desc="denoising", disable=not progress, leave=False):
            noisy = scheduler.scale_model_input(latents, t)
            cond = torch.cat([c for c, _ in passes])
            src = torch.cat([s for _, s in passes]) if self.editing else None
            out = self._denoise(noisy.repeat(len(passes), 1, 1, 1), t.to(device), cond, src).chunk(len(passes))
            if len(passes) == 1:
                predicted = out[0]
            elif not self.editing or len(passes) == 2:
                predicted = out[1] + guidance * (out[0] - out[1])
            else:
                text, image, none = out
                predicted = none + image_guidance * (image - none) + guidance * (text - image)
            latents = scheduler.step(predicted, t, latents).prev_sample
            assert len(latents) == b
        return self.decode(latents).float()
