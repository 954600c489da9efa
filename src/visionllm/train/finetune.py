"""Fine-tune a trained model (v1 or v2) on a user's own annotation files, in one call.

    visionllm finetune --model checkpoints/visionllm-v1-tiny \\
        --train-json train.json --train-images train/ --val-json val.json --val-images val/ \\
        --minutes 10 --out my-model

It is one training stage of the ordinary loop (`run_stage`: resumable, SIGTERM-safe, progress bar, the same
checkpoints), set up for a user who sets nothing: the task mix is what the files hold, the class sets are their
category names (new categories are new phrases of the instruction: no head is resized), and the learning rate,
frozen parts and batch size are `DEFAULTS` of the model's version. The val set is scored before training (the
zero-shot value) and after; OUT_DIR ends as a model folder every command loads, with `finetune.json` (what was
run, and both scores) beside its weights and `training/` (checkpoints, log) under it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from visionllm.config import ConfigError
from visionllm.data.sources import AnnotationSet, DatasetConfig
from visionllm.formats.tasks import Task
from visionllm.models.common.checkpoint import read_config_data
from visionllm.models.loading import MODEL_CLASSES
from visionllm.train.distributed import process_state
from visionllm.train.loop import OptimConfig, TrainConfig, evaluate_sources, run_stage
from visionllm.train.mix import MixConfig

logger = logging.getLogger(__name__)

TASK_WEIGHTS = {
    Task.DETECTION: 1.0,
    Task.INSTANCE_SEGMENTATION: 0.5,
    Task.KEYPOINTS: 0.5,
    Task.CAPTION: 0.5,
    Task.GROUNDING: 0.5,
    Task.VQA: 1.0,
    Task.CHAT: 0.5,
}
"""How often each task the files hold is drawn."""


@dataclass
class VersionDefaults:
    """What a fine-tune of one model version trains, and how, unless told otherwise."""

    lr: float
    batch_size: int
    freeze: list[str] = field(default_factory=list)
    warmup_steps: int = 50


DEFAULTS = {
    # v1: the backbone and the text encoder keep what they know; the image tokenizer learns the new phrases'
    # objects and the LLM their answers
    "visionllm-v1": VersionDefaults(lr=3e-4, batch_size=16, freeze=["backbone", "text_encoder"]),
    # v2: the vision encoder and the image decoders stay; the LLM, the super links and the object decoders train
    "visionllm-v2": VersionDefaults(
        lr=1e-4, batch_size=8, freeze=["vision", "generation_decoder", "editing_decoder", "patch_labels"]
    ),
}


def finetune(
    model_dir: str | Path,
    dataset: DatasetConfig,
    out: str | Path,
    minutes: float | None = None,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    freeze: list[str] | None = None,
    tasks: dict[str, float] | None = None,
    eval_every: int = 0,
    eval_images: int | None = None,
    workers: int = 0,
    resume: bool = False,
    baseline: bool = True,
) -> dict[str, Any]:
    """Fine-tune the model in `model_dir` on `dataset`; the result is the model folder `out`.

    Args:
        minutes, steps: the budget: training time, or steps (one of them; both: whichever ends first).
        lr, batch_size, freeze, tasks: override the version's `DEFAULTS` and the mix drawn from the files.
        eval_every: also score the val set every this many steps (0: at the end only).
        eval_images: score the first N val images only.
        workers: processes that read and decode images while the model trains (0: the training process).
        resume: continue an interrupted fine-tune in `out`.
        baseline: score the val set before training too (the zero-shot value).

    Returns: the run's report (also written to `out/finetune.json`): settings, `zero_shot` and `final` metrics.

    Raises:
        ConfigError: a budget or setting out of range, or data with nothing this model can train on.
        DatasetFormatError, FileNotFoundError: a malformed or missing annotation file (the message names it).
    """
    if minutes is None and steps is None:
        raise ConfigError("give a budget: --minutes N or --steps N")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"{out} is not empty; choose a new --out folder, or pass --resume to continue there")
    saved = read_config_data(model_dir)
    model_type = saved.get("model_type", "visionllm-v1")
    if model_type not in DEFAULTS:
        raise ConfigError(f"{model_dir}: fine-tuning trains {sorted(DEFAULTS)}, not {model_type!r}")
    model_class = MODEL_CLASSES[model_type]
    defaults = DEFAULTS[model_type]
    model_config = model_class.config_class.from_dict(saved)
    train_set = AnnotationSet(dataset.train, dataset.skip_bad, name="the training set")
    mix = tasks or _mix(train_set, model_class)
    config = TrainConfig(
        output_dir=str(out / "training"),
        dataset=dataset,
        mix=MixConfig(tasks=mix),
        optim=OptimConfig(
            lr=lr or defaults.lr, weight_decay=0.01, betas=[0.9, 0.98], warmup_steps=defaults.warmup_steps,
            grad_clip=1.0, min_lr_ratio=0.05,
        ),
        batch_size=batch_size or defaults.batch_size,
        max_steps=steps or 10**8,
        max_minutes=minutes,
        log_every=10,
        eval_every=eval_every,
        save_every=100,
        eval_images=eval_images,
        init_from=str(model_dir),
        freeze=list(defaults.freeze if freeze is None else freeze),
        num_workers=workers,
    )  # fmt: skip
    report: dict[str, Any] = {
        "model": str(model_dir),
        "train": asdict(config),
        "train_images": len({s.image_path for task in train_set.tasks for s in train_set.samples(task)}),
        "skipped_annotations": len(train_set.skipped),
    }
    report_path = out / "finetune.json"
    main = process_state().is_main_process  # one process scores and writes (under torchrun / accelerate)
    previous = json.loads(report_path.read_text()) if resume and report_path.exists() else {}
    if main and baseline and dataset.val:
        report["zero_shot"] = previous.get("zero_shot") or _score(model_class.from_pretrained(model_dir), config)
        logger.info("zero-shot: %s", report["zero_shot"])
    if main:
        out.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2))
    final = run_stage(model_config, config, resume=resume and (out / "training").exists(), data=train_set)
    if not main:
        return report
    for item in final.iterdir():  # the final model becomes `out` itself
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    final.rmdir()
    if dataset.val:
        report["final"] = _score(model_class.from_pretrained(out), config)
    report_path.write_text(json.dumps(report, indent=2))
    return report


def _mix(train_set: AnnotationSet, model_class: Any) -> dict[str, float]:
    trained = {t.value for t in model_class.TASKS}
    mix = {t.value: TASK_WEIGHTS.get(t, 0.5) for t in train_set.tasks if t.value in trained}
    if not mix:
        held = ", ".join(t.value for t in train_set.tasks) or "nothing"
        raise ConfigError(f"the training files hold {held}; this model trains {', '.join(sorted(trained))}")
    return mix


def _score(model: Any, config: TrainConfig) -> dict[str, float]:
    assert config.dataset is not None
    return {k: round(v, 4) for k, v in evaluate_sources(model.eval(), config.dataset.val, config.eval_images).items()}
