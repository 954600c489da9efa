"""The training loop: one explicit loop for both stages, on accelerate.

    visionllm train --config configs/tiny_stage1.yaml [--resume]

Runs as a single CPU process by default and unchanged under `accelerate launch` on many GPUs.
Checkpoints are written atomically every `save_every` steps (model folder + optimiser, scheduler,
step and RNG states); `--resume` continues from the newest one and, since example i of the data
stream is a function of (seed, i), sees exactly the batches an uninterrupted run would have seen.

SIGTERM and Ctrl-C (SIGINT) stop a run after the step in progress, with a checkpoint of that step
(`TrainingInterrupted`). A loss or gradient that is not finite stops the run before it reaches the
weights (`NonFiniteLossError`), or skips the step, as `train.on_nonfinite_loss` says.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType
from tqdm.auto import tqdm

from visionllm.config import ConfigError, build, load_yaml
from visionllm.data.shapes.dataset import ShapesWorldLayout, generate_shapesworld
from visionllm.data.shapes.scene import ShapesWorldConfig
from visionllm.data.sources import AnnotationSet, DatasetConfig, SourceConfig
from visionllm.eval.runner import evaluate_shapesworld
from visionllm.models.loading import MODEL_CLASSES
from visionllm.train.average import WeightAverage
from visionllm.train.mix import MixConfig

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the training data is; generated there first (ShapesWorld) when missing."""

    root: str = "data/shapesworld"
    train: int = 10000
    val: int = 500
    image_size: int = 128
    seed: int = 0


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay to `min_lr_ratio` * lr.

    Attributes:
        visual_lr_scale: learning-rate multiplier of the backbone and the image tokenizer (as DETR trains its
            backbone at a tenth of the rate): a stage that adds a freshly initialised LLM on a trained tokenizer
            keeps the tokenizer from drifting while the LLM's first gradients are noise.
    """

    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 200
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.1
    visual_lr_scale: float = 1.0


@dataclass
class TrainConfig:
    """One training stage.

    Attributes:
        output_dir: run folder (checkpoints/, log.jsonl, final/).
        init_from: a checkpoint folder to start from (stage 2 starts from stage 1's final model).
        freeze: groups kept fixed: backbone, tokenizer (all of it), tokenizer_visual (the tokenizer but its text
            fusion), text_encoder, llm.
        tokenizer_loss_weight: weight of L_tok in L = L_tok + L_dec.
        tokenizer_only: train the image tokenizer alone on L_tok, without the LLM's pass: a first stage that trains
            the visual part as an open-vocabulary detector at a fraction of a full step's cost (the LLM and the
            periodic evaluation, which reads the LLM's answers, are left out).
        eval_tasks, eval_images: what the periodic evaluation measures, on how many val images (None: all).
        on_nonfinite_loss: "stop": a step whose loss or gradient norm is nan or inf ends the run before the
            optimiser uses it (the last checkpoint is intact); "skip": the step is left out and the run goes on
            (logged), and MAX_SKIPPED_IN_A_ROW skipped steps in a row end it.
        dataset: a user's annotation files to train on (`data.sources.DatasetConfig`) instead of ShapesWorld
            (`data`); the periodic and final evaluations then score its val sources with the COCO metrics.
        max_minutes: a time budget: the run ends when its training steps have taken this long (at most
            `max_steps` steps), and the learning rate decays over the budget instead of over the steps.
        grad_accumulation: micro-batches per step: each process runs its share of `batch_size` (the global batch)
            in this many passes, their gradients summed before the step (less memory, the same batch).
        gradient_checkpointing: recompute activations in the backward pass (`_checkpoint_activations`).
        num_workers: processes that read and decode the images of coming batches while the model trains (0: the
            training process itself; on 2 cores that is fastest).
        cache_query_states: a stage that trains image decoders alone (v2's stage 5) reads each drawing's query
            states once, before the first step, and trains on those (`models.v2.cached_calls`): the frozen chat
            model does not run at every step. The cache is a file of the run folder.
        ema_decay: keep a weight average of the trained parameters (an exponential moving average with this decay
            per step, as diffusion models are trained): `final/` holds the average, and each checkpoint the live
            weights with the average beside them (`weight_average.safetensors`). None: no average.
    """

    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 16
    max_steps: int = 1000
    log_every: int = 20
    eval_every: int = 500
    save_every: int = 200
    keep_checkpoints: int = 2
    mixed_precision: str = "bf16"
    seed: int = 0
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)
    tokenizer_loss_weight: float = 1.0
    tokenizer_only: bool = False
    eval_tasks: list[str] = field(default_factory=lambda: ["detection"])
    eval_images: int | None = 100
    num_threads: int | None = None
    on_nonfinite_loss: str = "stop"
    dataset: DatasetConfig | None = None
    max_minutes: float | None = None
    grad_accumulation: int = 1
    gradient_checkpointing: bool = False
    num_workers: int = 0
    cache_query_states: bool = False
    ema_decay: float | None = None

    @property
    def frozen_groups(self) -> list[str]:
        """The groups this stage keeps fixed: `freeze`, and the LLM when the tokenizer trains alone."""
        return [*self.freeze, "llm"] if self.tokenizer_only else list(self.freeze)

    def __post_init__(self) -> None:
        if self.on_nonfinite_loss not in ("stop", "skip"):
            raise ConfigError(f"train.on_nonfinite_loss must be 'stop' or 'skip', not {self.on_nonfinite_loss!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError("train.mixed_precision must be 'no', 'bf16' or 'fp16'")
        for name in ("max_steps", "batch_size", "save_every", "log_every", "grad_accumulation"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, not {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be at least 0, not {self.num_workers}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"train.max_minutes must be above 0, not {self.max_minutes}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be between 0 and 1 (e.g. 0.999), not {self.ema_decay}")


def load_run_config(path: str | Path) -> tuple[Any, TrainConfig]:
    """A preset file: `model:` (read into the `config_class` of its `model_type`'s model) and `train:`
    (TrainConfig); `base:` names a file whose `model:` section this one's `model:` refines (key by key, at any
    depth)."""
    data = load_yaml(path)
    unknown = sorted(set(data) - {"model", "train", "base"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; expected model, train, base")
    model_data = data.get("model") or {}
    if data.get("base"):
        model_data = _merged(load_yaml(Path(path).parent / data["base"]).get("model") or {}, model_data)
    model_type = model_data.get("model_type", "visionllm-v1")
    trainable = sorted(name for name, cls in MODEL_CLASSES.items() if hasattr(cls, "training_stream"))
    if model_type not in trainable:
        raise ConfigError(f"{path}: model_type {model_type!r} cannot be trained by this version; it trains {trainable}")
    model_config = MODEL_CLASSES[model_type].config_class.from_dict(model_data)
    train_config = build(TrainConfig, data.get("train"), "train")
    return model_config, train_config


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both else value
    return merged


def _param_groups(model: torch.nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups: with and without weight decay (biases, norms, embeddings), each for the model's visual part
    (`VISUAL_PARTS`: backbone and tokenizer in v1; at `visual_lr_scale`) and the rest."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (param.ndim < 2 or "norm" in name or "embed" in name)
        visual = name.split(".")[0] in model.VISUAL_PARTS
        groups.setdefault((decays, visual), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": optim.weight_decay if decays else 0.0,
            "lr": optim.lr * (optim.visual_lr_scale if visual else 1.0),
        }
        for (decays, visual), params in sorted(groups.items())
    ]


class Budget:
    """The training time a run has spent (its steps, not its evaluations or checkpoints), across resumes."""

    def __init__(self, minutes: float | None, spent_s: float = 0.0) -> None:
        self.seconds = None if minutes is None else 60.0 * minutes
        self.spent_s = spent_s
        self._since: float | None = None

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self.spent_s += time.perf_counter() - self._since
            self._since = None

    def fraction(self) -> float | None:
        """The share of the budget spent (None without a budget)."""
        if self.seconds is None:
            return None
        running = 0.0 if self._since is None else time.perf_counter() - self._since
        return min(1.0, (self.spent_s + running) / self.seconds)

    @property
    def spent(self) -> bool:
        return self.seconds is not None and self.spent_s >= self.seconds


def _schedule(step: int, config: TrainConfig, budget: Budget | None = None) -> float:
    warmup = config.optim.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    timed = budget.fraction() if budget is not None else None
    progress = timed if timed is not None else (step - warmup) / max(1, config.max_steps - warmup)
    floor = config.optim.min_lr_ratio
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ensure_data(config: DataConfig) -> Path:
    layout = ShapesWorldLayout(Path(config.root))
    if not layout.card.exists():
        logger.info("generating ShapesWorld at %s", layout.root)
        generate_shapesworld(
            layout.root, config.train, config.val, ShapesWorldConfig(image_size=config.image_size), seed=config.seed
        )
    return layout.root


class StepSampler(torch.utils.data.Sampler[int]):
    """Indices step * batch_size + j from `start_step` on: the data order depends on the step alone."""

    def __init__(self, start_step: int, max_steps: int, batch_size: int) -> None:
        self.start, self.stop = start_step * batch_size, max_steps * batch_size

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _checkpoints(output: Path) -> list[Path]:
    folder = output / "checkpoints"
    found = [p for p in folder.glob("step-*") if (p / "training_state.pt").exists()] if folder.exists() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


MAX_SKIPPED_IN_A_ROW = 10
"""With `on_nonfinite_loss: skip`, this many non-finite steps in a row end the run: it has diverged."""


class TrainingInterrupted(Exception):
    """The run stopped on SIGTERM or SIGINT after saving a checkpoint of its last step.

    Attributes:
        step: the last step done (and saved).
        signal_number: the signal received.
        checkpoint: the checkpoint folder to resume from.
    """

    def __init__(self, step: int, signal_number: int, checkpoint: Path) -> None:
        self.step, self.signal_number, self.checkpoint = step, signal_number, checkpoint
        name = signal.Signals(signal_number).name
        super().__init__(f"stopped by {name} after step {step}; checkpoint {checkpoint}")


class NonFiniteLossError(RuntimeError):
    """A step's loss or gradient norm was nan or inf (and the run was told to stop on it)."""


class _StopOnSignals:
    """Within the block, SIGTERM and SIGINT ask the loop to stop after the current step instead of killing it.

    Handlers can only be installed from the main thread; elsewhere (a run started from a worker thread) the
    signals keep their usual effect.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        if self.received is None:
            logger.warning("%s received: stopping after this step, with a checkpoint", signal.Signals(number).name)
        self.received = number

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def train(config_path: str | Path, resume: bool = False, max_steps: int | None = None) -> Path:
    """Run (or resume) one training stage of a preset file; returns the final model folder.

    Raises:
        TrainingInterrupted: SIGTERM or SIGINT arrived; a checkpoint of the last step was saved first.
        NonFiniteLossError: a non-finite loss with `on_nonfinite_loss: stop` (or too many skipped in a row).
    """
    model_config, config = load_run_config(config_path)
    return run_stage(model_config, config, resume, max_steps)


def run_stage(
    model_config: Any,
    config: TrainConfig,
    resume: bool = False,
    max_steps: int | None = None,
    data: AnnotationSet | None = None,
) -> Path:
    """Run (or resume) one training stage (`train`, from configs already read); returns the final model folder.

    Args:
        data: `config.dataset`'s training files, when the caller has read them already (`finetune`).
    """
    groups = MODEL_CLASSES[model_config.model_type].FREEZE_GROUPS
    unknown = sorted(set(config.frozen_groups) - set(groups))
    if unknown:  # before any data is generated or weights are built
        raise ConfigError(f"train.freeze: unknown group(s) {unknown}; groups: {list(groups)}")
    if max_steps is not None:
        if max_steps < 1:
            raise ConfigError(f"--max-steps must be at least 1, not {max_steps}")
        config.max_steps = max_steps
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    accelerator = _accelerator(config.mixed_precision, config.grad_accumulation)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.dataset is None:
        source: Path | AnnotationSet = ensure_data(config.data)
    else:
        source = data or AnnotationSet(config.dataset.train, config.dataset.skip_bad, name="the training set")

    model_class = MODEL_CLASSES[model_config.model_type]
    model = model_class.for_stage(model_config, config.init_from or None)
    model.freeze(config.frozen_groups)
    if accelerator.is_main_process:  # before the model goes to its devices
        _report_plan(model, model_config, config, accelerator.num_processes)
    _train_mode(model)
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        # batch statistics over the global batch (CPU processes have no synchronised batch norm: a backbone that
        # trains there normalises each process's share by its own statistics)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.optim), lr=config.optim.lr, betas=tuple(config.optim.betas)
    )
    budget = Budget(config.max_minutes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _schedule(step, config, budget))
    start_step = 0
    existing = _checkpoints(output)
    main = accelerator.is_main_process
    if resume and existing:
        start_step, budget.spent_s = _load_state(existing[-1], model, optimizer, scheduler)
        if main:
            _trim_log(output / "log.jsonl", start_step)
        logger.info("resumed from %s (step %d)", existing[-1], start_step)
    elif existing and not resume:
        raise FileExistsError(
            f"{output} already has checkpoints; pass --resume to continue, or choose another output_dir"
        )
    if main:
        (output / "train_config.json").write_text(
            json.dumps({"model": model_config.to_dict(), "train": asdict(config)}, indent=2)
        )
    shares = accelerator.num_processes * config.grad_accumulation
    if config.batch_size % shares:
        raise ConfigError(
            f"train.batch_size {config.batch_size} is the global batch, split over {accelerator.num_processes} "
            f"process(es) and {config.grad_accumulation} accumulation step(s): make it a multiple of {shares}"
        )
    if config.gradient_checkpointing:
        _checkpoint_activations(model)

    if config.cache_query_states:
        dataset = _cached_stream(model, model_config, config, source, accelerator)
    else:
        dataset = model.training_stream(source, "train", config.mix, seed=config.seed, batch_size=config.batch_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size // config.grad_accumulation,  # a micro-batch (of every process)
        sampler=StepSampler(start_step, config.max_steps, config.batch_size),
        collate_fn=model.collate,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        # its own generator: the workers' base seed drawn from torch's would shift a resumed run's random draws
        generator=torch.Generator().manual_seed(config.seed),
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    trainable = [p for p in model.parameters() if p.requires_grad]
    average = None
    if config.ema_decay is not None:
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ConfigError("train.ema_decay: a weight average of sharded weights is not supported; leave it out")
        average = WeightAverage(accelerator.unwrap_model(model), config.ema_decay)
        if start_step and not average.load(existing[-1]):
            logger.info("%s has no weight average: the average starts from its weights", existing[-1])
    options = model_class.loss_options(config)
    log_path = output / "log.jsonl"
    step = start_step
    started = time.perf_counter()
    quiet = not accelerator.is_main_process
    if budget.seconds is None:
        bar = tqdm(total=config.max_steps, initial=start_step, desc="train", disable=quiet)
    else:  # a time budget: the bar runs over its seconds
        spent = round(budget.spent_s)
        bar = tqdm(total=round(budget.seconds), initial=spent, desc="train", unit="s", disable=quiet)
        bar.bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]"
    skipped_in_a_row = 0
    finite = True  # over the micro-batches of the step
    with _StopOnSignals() as stop, bar:
        for batch in loader:
            if budget.spent:  # a resumed run whose budget was spent (every process read the same checkpoint)
                break
            budget.start()
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    losses = model(batch, **options)
                # every process takes the same branch (a collective in one branch only would hang the others)
                finite = finite and not _agree(accelerator, not bool(torch.isfinite(losses["loss"].detach())))
                if finite:
                    accelerator.backward(losses["loss"])
                if accelerator.sync_gradients:
                    if finite and config.optim.grad_clip:
                        norm = accelerator.clip_grad_norm_(trainable, config.optim.grad_clip)
                        finite = norm is None or bool(torch.isfinite(torch.as_tensor(norm)))
                    if finite:
                        optimizer.step()
                        skipped_in_a_row = 0
                        if average is not None:
                            average.update()
                    else:
                        skipped_in_a_row += 1
                        _nonfinite_step(
                            config, log_path, step + 1, losses, skipped_in_a_row, _checkpoints(output), main
                        )
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            budget.stop()
            if not accelerator.sync_gradients:
                continue  # the step's next micro-batch
            finite = True
            step += 1
            if budget.seconds is None:
                bar.update(1)
            else:
                bar.update(min(round(budget.spent_s), bar.total) - bar.n)
            last = step == config.max_steps or _agree(accelerator, budget.spent)
            if step % config.log_every == 0 or last:
                # the global batch's losses (the mean of the processes')
                losses = {k: accelerator.reduce(torch.as_tensor(v).detach(), "mean") for k, v in losses.items()}
                record = {
                    "step": step,
                    "lr": scheduler.get_last_lr()[0],
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
                if budget.seconds is not None:
                    record["train_minutes"] = round(budget.spent_s / 60, 2)
                record.update(_loss_record(losses))
                bar.set_postfix(loss=record["loss"], **({} if budget.seconds is None else {"step": step}))
                if main:
                    _append(log_path, record)
            stopping = _agree(accelerator, stop.received is not None)
            unwrapped = accelerator.unwrap_model(model)
            if step % config.save_every == 0 or last or stopping:
                weights = _gathered(accelerator, model)  # every process takes part when the weights are sharded
                if main:
                    _save_state(
                        output,
                        unwrapped,
                        optimizer,
                        scheduler,
                        step,
                        config.keep_checkpoints,
                        budget.spent_s,
                        weights,
                        average,
                    )
                accelerator.wait_for_everyone()
            if stopping:
                number = stop.received or signal.SIGTERM  # a process the signal missed stops with the others
                if main:
                    _append(log_path, {"step": step, "interrupted": signal.Signals(number).name})
                raise TrainingInterrupted(step, number, _checkpoints(output)[-1])
            if config.eval_every and not config.tokenizer_only and (step % config.eval_every == 0 or last):
                if main:
                    metrics = _evaluate(unwrapped, config, source)
                    _append(log_path, {"step": step, "eval": metrics})
                    logger.info("step %d: %s", step, metrics)
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
                _train_mode(model)
                accelerator.wait_for_everyone()
            if last:
                break
    final = output / "final"
    weights = _gathered(accelerator, model)
    if average is not None:
        weights = average.state_dict(weights or accelerator.unwrap_model(model).state_dict())
    if main:
        accelerator.unwrap_model(model).save_pretrained(final, state_dict=weights)
    accelerator.wait_for_everyone()
    return final


def _cached_stream(
    model: torch.nn.Module,
    model_config: Any,
    config: TrainConfig,
    source: Path | AnnotationSet,
    accelerator: Accelerator,
) -> torch.utils.data.Dataset:
    """`train.cache_query_states`' stream: the main process computes the cache (on the accelerator) and writes it
    in the run folder; the others read it there."""
    if not hasattr(model, "cached_call_stream"):
        raise ConfigError(
            f"train.cache_query_states: {model_config.model_type} has no image decoders to train on cached query "
            "states; leave it out"
        )
    model.to(accelerator.device)

    def stream() -> torch.utils.data.Dataset:
        return model.cached_call_stream(
            source,
            "train",
            config.mix,
            config.frozen_groups,
            Path(config.output_dir) / "query_states.safetensors",
            seed=config.seed,
            batch_size=config.batch_size,
            progress=accelerator.is_main_process,
        )

    dataset = stream() if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    return dataset if dataset is not None else stream()


def _gathered(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full weights of a run whose weights are sharded over its processes (FSDP, DeepSpeed ZeRO-3), gathered
    by all of them for the main process to save; None otherwise (the module holds them)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return accelerator.get_state_dict(model)
    return None


LARGE_MODEL = 200_000_000
"""Parameters from which a run prints its memory plan and weight sources before the model goes to its devices."""


def _report_plan(model: torch.nn.Module, model_config: Any, config: TrainConfig, processes: int) -> None:
    """Where the parts' weights come from and, for a large model, the memory its training needs per GPU
    (`models.memory`), counted on the built (and frozen) model before it is moved to the GPUs."""
    from visionllm.models.memory import MemoryPlan, weight_sources

    start = f"the checkpoint {config.init_from}" if config.init_from else None
    for part, source in weight_sources(model_config):
        logger.info("%s: %s", part, f"from {start}" if start else source)
    plan = MemoryPlan.of(model)
    if plan.total >= LARGE_MODEL:
        tqdm.write(f"{plan.total / 1e9:.2f}B parameters ({plan.trainable / 1e9:.2f}B trained)")
        tqdm.write(plan.table(processes))
        if not start:
            tqdm.write("weights: " + "; ".join(f"{part} {source}" for part, source in weight_sources(model_config)))


def _checkpoint_activations(model: torch.nn.Module) -> None:
    """Recompute activations in the backward pass (less memory, about a third more compute) in every transformers
    model of the run that supports it (the LLM, the vision encoder, the text encoder)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            if hasattr(module, "activation_checkpointing_enable"):  # transformers 5's name
                module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _agree(accelerator: Accelerator, flag: bool) -> bool:
    """Whether the flag is set on any process (the flag itself in one process)."""
    if accelerator.num_processes == 1:
        return flag
    found = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(found, "sum").item() > 0)


def _train_mode(model: torch.nn.Module) -> None:
    """Training mode, but for the batch norms of frozen parts: those keep their running statistics (as frozen
    batch norm does in detection training), so that a frozen part is fixed and does not hang on the batch."""
    model.train()
    for module in model.modules():
        frozen = not any(p.requires_grad for p in module.parameters(recurse=False))
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and frozen:
            module.eval()


def _evaluate(model: torch.nn.Module, config: TrainConfig, data: Path | AnnotationSet) -> dict[str, float]:
    """The periodic evaluation: ShapesWorld's val split on `eval_tasks`, or a data set's val sources."""
    if config.dataset is None:
        assert isinstance(data, Path)
        return evaluate_shapesworld(
            model, data, "val", config.eval_tasks, limit=config.eval_images, progress=False, controls=False
        )
    return evaluate_sources(model, config.dataset.val, limit=config.eval_images)


def evaluate_sources(model: Any, sources: list[SourceConfig], limit: int | None = None) -> dict[str, float]:
    """COCO metrics of a data set's val sources: boxes of instances files (and masks where they have polygons),
    keypoints of keypoint files, each metric named `<file stem>/<task>/<metric>` (`detect/AP50`: one file)."""
    from visionllm.eval.runner import evaluate_coco

    tasks = {"coco_instances": ("detect", "segment"), "coco_keypoints": ("keypoints",)}
    answered = {t.value for t in model.TASKS}
    named = {"detect": "detection", "segment": "instance_segmentation", "keypoints": "keypoints"}
    metrics: dict[str, float] = {}
    for source in sources:
        for task in tasks.get(source.kind, ()):
            if named[task] not in answered:
                continue
            if task == "segment" and not _has_polygons(source.json):
                continue
            found = evaluate_coco(model, source.json, source.images, task, limit=limit, progress=False)
            prefix = f"{task}/" if len(sources) == 1 else f"{Path(source.json).stem}/{task}/"
            metrics.update({prefix + k: v for k, v in found.items()})
    return metrics


def _has_polygons(path: str) -> bool:
    annotations = json.loads(Path(path).read_text()).get("annotations", [])
    return any(isinstance(a.get("segmentation"), list) and a["segmentation"] for a in annotations)


def _accelerator(mixed_precision: str, grad_accumulation: int = 1) -> Accelerator:
    """The run's Accelerator. accelerate keeps one state per process; a stage run after another in the same process
    (a notebook's stage 1 then stage 2) may ask for another precision, so a state of another precision is reset."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accumulation,
        cpu=not torch.cuda.is_available(),
        # train.batch_size is the global batch: each process takes its share of every batch of the one stream,
        # so that N processes see the batches one process would
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # a task mix leaves some heads out of some steps
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _loss_record(losses: dict[str, torch.Tensor]) -> dict[str, float | str]:
    """The loss parts for the log: rounded numbers, and "nan" / "inf" as text (JSON has no such numbers)."""
    record: dict[str, float | str] = {}
    for key, value in losses.items():
        number = float(value.detach())
        record[key] = round(number, 4) if math.isfinite(number) else str(number)
    return record


def _nonfinite_step(
    config: TrainConfig,
    log_path: Path,
    step: int,
    losses: dict[str, torch.Tensor],
    in_a_row: int,
    saved: list[Path],
    main: bool = True,
) -> None:
    """Log a step whose loss or gradient is not finite; raise `NonFiniteLossError` unless it is to be skipped."""
    parts = _loss_record(losses)
    described = ", ".join(f"{k} {v}" for k, v in parts.items())
    last = f"the last checkpoint is {saved[-1]}" if saved else "no checkpoint was saved yet"
    if config.on_nonfinite_loss == "skip" and in_a_row < MAX_SKIPPED_IN_A_ROW:
        logger.warning("step %d: non-finite loss or gradient (%s): step skipped", step, described)
        if main:
            _append(log_path, {"step": step, "skipped": "non-finite loss or gradient", **parts})
        return
    if main:
        _append(log_path, {"step": step, "stopped": "non-finite loss or gradient", **parts})
    why = f"{in_a_row} steps in a row had" if in_a_row > 1 else "the loss or its gradient was"
    raise NonFiniteLossError(
        f"step {step}: {why} not finite ({described}); stopped before the weights were changed; {last}. "
        "Lower optim.lr or raise optim.warmup_steps, or set train.on_nonfinite_loss: skip to leave such steps out"
    )


def _trim_log(path: Path, step: int) -> None:
    """Drop the records of steps after `step` (those logged after the checkpoint a run resumes from: the resumed
    run logs them again), so that the log holds each step once."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _save_state(
    output: Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    step: int,
    keep: int,
    spent_s: float = 0.0,
    weights: dict[str, torch.Tensor] | None = None,
    average: WeightAverage | None = None,
) -> None:
    """Write checkpoints/step-N atomically (a temporary folder renamed into place), keep the newest `keep`."""
    folder = output / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=weights)
    if average is not None:
        average.save(tmp)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "train_seconds": float(spent_s),
    }
    torch.save(state, tmp / "training_state.pt")
    final = folder / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _load_state(folder: Path, model: torch.nn.Module, optimizer, scheduler) -> tuple[int, float]:
    """Restore a checkpoint; returns its step and the training seconds spent up to it."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    model.load_state_dict(state, strict=False)
    training = load_training_state(folder / "training_state.pt")
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    _set_rng_state(training["rng"])
    return int(training["step"]), float(training.get("train_seconds", 0.0))


# NumPy arrays of plain dtypes (data, not code): the RNG state in training-state files of earlier versions.
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # NumPy 2 / 1
_ARRAY_TYPES = [_NUMPY_CORE.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class UnsafeCheckpointError(ValueError):
    """A training-state file that holds more than tensors and plain values."""


def load_training_state(path: Path) -> dict[str, Any]:
    """A checkpoint's training state (step, optimiser, scheduler, RNG states), read with `weights_only=True`: tensors
    and plain values only, so that no file can run code when a run is resumed.

    Raises:
        UnsafeCheckpointError: the file holds other objects (a crafted file).

    Files of earlier versions hold NumPy's RNG state as an array: NumPy arrays of plain dtypes are allowed too.
    """
    try:
        with torch.serialization.safe_globals(_ARRAY_TYPES):
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{path} holds objects other than tensors and plain values, and loading it could run code; refusing it. "
            "Resume from a checkpoint this version wrote, or start the run again"
        ) from error


def _rng_state() -> dict[str, Any]:
    """The torch, NumPy and Python RNG states as tensors and plain values (loadable with `weights_only=True`)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }  # fmt: skip


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore `_rng_state()` (or the tuples of NumPy's and Python's own formats, as earlier versions stored them)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    if isinstance(n, dict):
        n = (n["name"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"])
    np.random.set_state(n)
    p = state["python"]
    if isinstance(p, dict):
        p = (p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"])
    random.setstate(p)
