"""The `visionllm` command: thin argument parsing in front of library functions."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from visionllm import __version__

if typing.TYPE_CHECKING:
    from PIL import Image

    from visionllm.formats.results import GeneratedImage
    from visionllm.formats.tasks import Task

logger = logging.getLogger("visionllm")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _whole(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def _number(minimum: float, maximum: float | None = None):
    """An argparse type: a finite number in [minimum, maximum] (nan and inf are refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text}")
        return value

    return parse


_PORT = _whole(1, 65535)
_POSITIVE = _whole(1)


def _check_output_file(path: Path | None, flag: str, image: bool = False) -> None:
    """Refuse an output path that cannot be written, before any long work."""
    if path is None:
        return
    if path.is_dir():
        raise CliError(
            f"{flag} {path} is a folder: give a file name, e.g. {path / ('result.png' if image else 'metrics.json')}"
        )
    if image:
        from PIL import Image

        if path.suffix.lower() not in Image.registered_extensions():
            raise CliError(f"{flag} {path}: unknown picture format {path.suffix!r}; use .png or .jpg")
    if path.parent.exists() and not path.parent.is_dir():
        raise CliError(f"{flag} {path}: {path.parent} is a file, not a folder")


def _holdout_pairs(text: str) -> tuple[tuple[str, str], ...]:
    from visionllm.data.shapes.scene import CATEGORIES, COLORS

    pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        words = item.split()
        if len(words) != 2 or words[0] not in COLORS or words[1] not in CATEGORIES:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not 'COLOR SHAPE' (colours: {', '.join(COLORS)}; categories: {', '.join(CATEGORIES)})"
            )
        pairs.append((words[0], words[1]))
    return tuple(pairs)


def _scene_config(args: argparse.Namespace, **more):
    """The `ShapesWorldConfig` of `data shapes` / `data coco` flags."""
    from visionllm.data.shapes.scene import ShapesWorldConfig

    try:
        return ShapesWorldConfig(
            image_size=args.size,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            person_probability=args.person_probability,
            **more,
        )
    except ValueError as error:
        raise CliError(str(error)) from None


def _cmd_data_shapes(args: argparse.Namespace) -> None:
    from visionllm.data.shapes.dataset import generate_shapesworld
    from visionllm.data.shapes.inspect import describe, write_contact_sheet

    config = _scene_config(args, holdout_pairs=args.holdout)
    try:
        layout = generate_shapesworld(args.out, args.train, args.val, config, seed=args.seed, progress=not args.quiet)
    except (ValueError, OSError) as error:
        raise CliError(str(error)) from None
    print(describe(layout.root))
    if args.contact_sheet:
        split = "val" if args.val else "train"
        path = write_contact_sheet(layout.root, split, args.contact_sheet)
        print(f"contact sheet: {path}")


def _shape_names(text: str) -> tuple[str, ...]:
    from visionllm.data.shapes.scene import NEW_SHAPES, SHAPES

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in (*SHAPES, *NEW_SHAPES)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'nothing'}: shapes are comma-separated names among "
            f"{', '.join((*SHAPES, *NEW_SHAPES))}"
        )
    return names


def _cmd_data_coco(args: argparse.Namespace) -> None:
    from visionllm.data.shapes.coco_set import instances_path, write_coco_set

    config = _scene_config(args, shapes=args.shapes)
    try:
        counts = write_coco_set(args.out, args.train, args.val, config, seed=args.seed, progress=not args.quiet)
    except (ValueError, OSError) as error:
        raise CliError(str(error)) from None
    for split, count in counts.items():
        print(f"{split}: {count['images']} images, {count['objects']} objects -> {instances_path(args.out, split)}")


def _cmd_data_info(args: argparse.Namespace) -> None:
    from visionllm.data.shapes.inspect import describe

    print(describe(args.root))


def _cmd_data_sheet(args: argparse.Namespace) -> None:
    from visionllm.data.shapes.inspect import write_contact_sheet

    print(write_contact_sheet(args.root, args.split, args.out, count=args.count))


def _cmd_train(args: argparse.Namespace) -> int:
    from visionllm.config import ConfigError
    from visionllm.train.distributed import process_state
    from visionllm.train.loop import NonFiniteLossError, TrainingInterrupted, UnsafeCheckpointError, train

    try:
        final = train(args.config, resume=args.resume, max_steps=args.max_steps)
    except (ConfigError, FileExistsError, UnsafeCheckpointError) as error:
        raise CliError(str(error)) from None
    except TrainingInterrupted as stop:
        print(
            f"visionllm: training {stop}; continue with: visionllm train --config {args.config} --resume",
            file=sys.stderr,
        )
        return 128 + stop.signal_number  # the shell's convention for "ended by this signal"
    except NonFiniteLossError as error:
        print(f"visionllm: training stopped: {error}", file=sys.stderr)
        return 1
    if process_state().is_main_process:  # one report of a run on several processes
        print(f"final model: {final}")
    return 0


def _finetune_data(args: argparse.Namespace):
    """The data set of `finetune`'s flags: --data CONFIG, or --train-json/--train-images (and --val-*)."""
    from visionllm.config import build, load_yaml
    from visionllm.data.sources import DatasetConfig, SourceConfig, guess_kind

    if args.data:
        if args.train_json or args.val_json:
            raise CliError("give either --data CONFIG or --train-json/--val-json, not both")
        data = load_yaml(args.data)
        data.setdefault("skip_bad", args.skip_bad)
        return build(DatasetConfig, data, str(args.data))
    if not (args.train_json and args.train_images):
        raise CliError("give --train-json ANN.json --train-images DIR (or --data CONFIG.yaml)")
    if bool(args.val_json) != bool(args.val_images):
        raise CliError("--val-json and --val-images go together")
    train = [SourceConfig(guess_kind(args.train_json), str(args.train_json), str(args.train_images))]
    val = [SourceConfig(guess_kind(args.val_json), str(args.val_json), str(args.val_images))] if args.val_json else []
    return DatasetConfig(train, val, args.skip_bad)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from visionllm.config import ConfigError
    from visionllm.data.readers import DatasetFormatError
    from visionllm.train.distributed import process_state
    from visionllm.train.finetune import finetune
    from visionllm.train.loop import NonFiniteLossError, TrainingInterrupted

    if args.minutes is None and args.steps is None:
        raise CliError("give a budget: --minutes N or --steps N")
    try:
        dataset = _finetune_data(args)
        report = finetune(
            args.model, dataset, args.out, minutes=args.minutes, steps=args.steps, lr=args.lr,
            batch_size=args.batch_size, eval_every=args.eval_every, eval_images=args.eval_images,
            workers=args.workers, resume=args.resume, baseline=not args.no_baseline,
        )  # fmt: skip
    except (ConfigError, DatasetFormatError, FileExistsError) as error:
        raise CliError(str(error)) from None
    except TrainingInterrupted as stop:
        print(f"visionllm: fine-tuning {stop}; continue with the same command and --resume", file=sys.stderr)
        return 128 + stop.signal_number
    except NonFiniteLossError as error:
        print(f"visionllm: fine-tuning stopped: {error}", file=sys.stderr)
        return 1
    if not process_state().is_main_process:  # the main process reports
        return 0
    if report["skipped_annotations"]:
        print(f"left out {report['skipped_annotations']} malformed annotation(s) (--skip-bad)")
    for name in ("zero_shot", "final"):
        if name in report:  # the headline metrics (all of them are in OUT/finetune.json)
            shown = {k: v for k, v in report[name].items() if k.rsplit("/", 1)[-1] in ("AP", "AP50", "AP75")}
            print(f"{name.replace('_', '-')}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    print(f"fine-tuned model: {args.out} (scores and settings: {args.out / 'finetune.json'})")
    return 0


def _cmd_memory(args: argparse.Namespace) -> None:
    from visionllm.config import ConfigError
    from visionllm.models.memory import memory_plan, weight_sources
    from visionllm.train.loop import load_run_config

    try:
        model_config, train_config = load_run_config(args.config)
    except ConfigError as error:
        raise CliError(str(error)) from None
    plan = memory_plan(model_config, train_config.frozen_groups)
    print(plan.table(args.gpus))
    print()
    for part, source in weight_sources(model_config):
        print(f"{part:<22}{source}")


def _load_model(path: Path):
    """The checkpoint's model (either version)."""
    from visionllm.models.common.checkpoint import CheckpointError
    from visionllm.models.loading import load_pretrained

    try:
        model = load_pretrained(path)
    except (CheckpointError, FileNotFoundError) as error:
        raise CliError(str(error)) from None
    return model


def _check_answers(model, path: Path, task: Task) -> None:
    """Refuse a task the model does not answer, naming those it does (its `TASKS`: v2's image decoders are
    optional parts)."""
    if task not in model.TASKS:
        raise CliError(
            f"{path} is a v{model.version} model and does not answer {task.value}; "
            f"it answers: {', '.join(t.value for t in model.TASKS)}"
        )


def _check_new_file(path: Path, flag: str) -> None:
    """Refuse an output picture that cannot be written (a folder, an unknown format, a folder that does not exist),
    before the model is loaded."""
    _check_output_file(path, flag, image=True)
    if not path.parent.is_dir():
        raise CliError(f"{flag} {path}: the folder {path.parent} does not exist")


def _check_steps(decoder, steps: int | None, flag: str = "--steps") -> None:
    """Refuse more sampling steps than the decoder's noise schedule has (DDIM picks steps among those)."""
    most = decoder.config.train_timesteps
    if steps is not None and steps > most:
        raise CliError(f"{flag} {steps} is more than the decoder's noise schedule has ({most} timesteps)")


def _numbered(path: Path, count: int) -> list[Path]:
    """Where `count` pictures asked for as `path` go: `path` itself for one, path_0, path_1, ... for more."""
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{k}{path.suffix}") for k in range(count)]


def _read_image(path: Path, flag: str) -> Image.Image:
    """The upright PIL image of a file, or a one-line error."""
    from PIL import Image

    from visionllm.models.common.inputs import upright

    if not path.is_file():
        raise CliError(f"{flag} {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        image = upright(Image.open(path))
        image.load()
    except OSError as error:
        raise CliError(f"{flag} {path} is not an image PIL can read: {error}") from None
    return image


def _texts(texts: Sequence[str], flag: str, wanted: str) -> list[str]:
    """The stripped texts of a repeated option; an empty one is refused (the model would draw from nothing)."""
    out = [text.strip() for text in texts]
    if not all(out):
        raise CliError(f"{flag} is empty: say {wanted}")
    return out


def _save_images(made: Sequence[GeneratedImage], paths: Sequence[Path]) -> None:
    """Write `GeneratedImage`s as the given files; print where each went, its size and its prompt."""
    from PIL import Image

    for image, path in zip(made, paths, strict=True):
        Image.fromarray(image.pixels).save(path)
        height, width = image.pixels.shape[:2]
        print(f"{path} ({width}x{height}, seed {image.seed}): {image.prompt}")


def _cmd_generate(args: argparse.Namespace) -> None:
    from visionllm.formats.tasks import Task

    prompts = _texts(args.prompt, "--prompt", "what to draw")
    _check_new_file(args.out, "--out")
    _make_images(args, Task.GENERATION, lambda model, sampling: model.text_to_image(prompts, **sampling))


def _cmd_edit(args: argparse.Namespace) -> None:
    from visionllm.formats.tasks import Task

    instructions = _texts(args.instruction, "--instruction", "how to change the image")
    _check_new_file(args.out, "--out")
    image = _read_image(args.image, "--image")
    _make_images(
        args,
        Task.EDITING,
        lambda model, sampling: model.edit_image(
            [image] * len(instructions), instructions, image_guidance=args.image_guidance, **sampling
        ),
    )


def _make_images(args: argparse.Namespace, task: Task, make: Callable[[typing.Any, dict], list]) -> None:
    """Load --model, check that it answers `task` and takes --steps, then save the images `make(model, sampling)`
    returns as --out (numbered for several)."""
    from visionllm.formats.tasks import Task

    model = _load_model(args.model)
    _check_answers(model, args.model, task)
    _check_steps(model.generation_decoder if task is Task.GENERATION else model.editing_decoder, args.steps)
    sampling = {"seed": args.seed, "steps": args.steps, "guidance": args.guidance, "progress": True}
    try:
        made = make(model, sampling)
    except ValueError as error:  # ProcessorError included: a prompt over the model's token limit
        raise CliError(str(error)) from None
    _save_images(made, _numbered(args.out, len(made)))


def _cmd_eval(args: argparse.Namespace) -> None:
    import json

    from visionllm.data.readers import DatasetFormatError
    from visionllm.eval.runner import evaluate_coco, evaluate_shapesworld

    if not (args.coco_json or args.shapesworld):
        raise CliError("give --coco-json ANN.json --images DIR, or --shapesworld DIR")
    if args.coco_json and not args.images:
        raise CliError("--coco-json needs --images (the folder its file_name entries are relative to)")
    _check_output_file(args.out, "--out")
    model = _load_model(args.model)
    try:
        if args.coco_json:
            metrics = evaluate_coco(model, args.coco_json, args.images, args.task, points=args.points, limit=args.limit)
        else:
            tasks = args.tasks.split(",") if args.tasks else None
            kwargs = {"tasks": tasks} if tasks else {}
            metrics = evaluate_shapesworld(
                model, args.shapesworld, args.split, limit=args.limit, controls=not args.no_controls, **kwargs
            )
    except (DatasetFormatError, ValueError) as error:  # a malformed file, an unknown task, a bad limit
        raise CliError(str(error)) from None
    text = json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def _cmd_predict(args: argparse.Namespace) -> None:
    import json

    from visionllm.formats.codec import CodecError
    from visionllm.formats.task_table import build_instruction
    from visionllm.formats.tasks import Task
    from visionllm.models.common.inputs import ProcessorError

    if (args.image is None) == (args.input is None):
        raise CliError("give --image FILE (one image, JSON printed) or --input DIR|ANN.json --out results.json (bulk)")
    if args.input is not None:
        return _predict_bulk(args)
    if not args.image.is_file():
        raise CliError(f"image {args.image} not found" + (" (it is a folder)" if args.image.is_dir() else ""))
    _check_output_file(args.save_vis, "--save-vis", image=True)
    model = _load_model(args.model)
    if not args.instruction:
        _check_answers(model, args.model, Task(args.task))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else []
    try:
        if args.instruction:
            instruction = (
                args.instruction if "<image>" in args.instruction else args.instruction + " The image is <image>."
            )
        else:
            instruction = build_instruction(
                Task(args.task),
                classes=classes,
                expression=args.expression,
                question=args.question,
                num_points=args.points,
                config=model.config.codec(),
            )
        decoded = model.predict([args.image], [instruction], min_score=args.min_score)[0]
    except (CodecError, ProcessorError, ValueError) as error:
        raise CliError(str(error)) from None
    result = decoded.prediction
    payload = {"instruction": instruction if isinstance(instruction, str) else instruction.text}
    payload["result"] = result.to_json()
    payload["dropped"] = [{"slot": d.slot, "reason": d.reason} for d in decoded.dropped]
    print(json.dumps(payload, indent=2))
    if args.save_vis:
        from PIL import Image

        from visionllm.models.common.inputs import upright
        from visionllm.vis import draw_result

        args.save_vis.parent.mkdir(parents=True, exist_ok=True)
        draw_result(upright(Image.open(args.image)), result, min_side=384).save(args.save_vis)


def _predict_bulk(args: argparse.Namespace) -> None:
    from visionllm.data.readers import DatasetFormatError
    from visionllm.eval.bulk import BULK_TASKS, bulk_predict, coco_images, folder_images
    from visionllm.formats.task_table import build_instruction
    from visionllm.formats.tasks import Task
    from visionllm.train.distributed import process_state

    if args.task not in BULK_TASKS or args.instruction:
        raise CliError(f"bulk inference (--input) answers --task {', '.join(BULK_TASKS)}")
    if args.out is None:
        raise CliError("--input needs --out results.json (the merged COCO results file)")
    _check_output_file(args.out, "--out")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else []
    try:
        if args.input.is_dir():
            images, category_ids = folder_images(args.input), {c: i + 1 for i, c in enumerate(classes)}
        else:
            if args.images is None:
                raise CliError("--input ANN.json needs --images DIR (the folder of its file_name entries)")
            images, category_ids = coco_images(args.input, args.images)
    except DatasetFormatError as error:
        raise CliError(str(error)) from None
    classes = classes or list(category_ids)
    if args.task in ("detection", "instance_segmentation", "keypoints") and not classes:
        raise CliError(f"--task {args.task} over a folder needs --classes (a COCO file's categories are its own)")
    unknown = [c for c in classes if c not in category_ids]
    if unknown:
        raise CliError(f"--classes {', '.join(unknown)}: not categories of {args.input} ({', '.join(category_ids)})")
    model = _load_model(args.model).to(process_state().device)
    _check_answers(model, args.model, Task(args.task))
    instruction = build_instruction(
        Task(args.task), classes=classes, num_points=args.points, config=model.config.codec()
    )
    out = bulk_predict(
        model, images, instruction, category_ids, args.out, batch_size=args.batch_size, min_score=args.min_score
    )
    if out is not None:
        print(f"results of {len(images)} images: {out}")


def _image_prefix(prefix: Path | None) -> Path | None:
    """The checked PREFIX of `chat --save-images` (images go to PREFIX_0.png, ...), without a .png ending."""
    if prefix is None:
        return None
    if prefix.is_dir():
        raise CliError(f"--save-images {prefix} is a folder: give a prefix, e.g. {prefix / 'reply'}")
    prefix = prefix.with_suffix("") if prefix.suffix.lower() == ".png" else prefix
    if not prefix.parent.is_dir():
        raise CliError(f"--save-images {prefix}: the folder {prefix.parent} does not exist")
    return prefix


def _cmd_chat(args: argparse.Namespace) -> None:
    import json

    from PIL import Image

    _check_output_file(args.save_vis, "--save-vis", image=True)
    prefix = _image_prefix(args.save_images)
    image = _read_image(args.image, "--image") if args.image is not None else None
    regions: list[tuple] = [("point", p) for p in args.point or []] + [("box", b) for b in args.box or []]
    for path in args.mask or []:
        try:
            regions.append(("mask", np.asarray(Image.open(path).convert("L"))))
        except OSError as error:
            raise CliError(f"--mask {path} is not an image: {error}") from None
    if regions and image is None:
        raise CliError("--point, --box and --mask mark regions of the image: give --image too")
    if args.save_vis and image is None:
        raise CliError("--save-vis draws on the image: give --image too")
    model = _load_model(args.model)
    if not hasattr(model, "chat"):
        raise CliError(
            f"{args.model} is a v{model.version} model, which answers one instruction: use visionllm predict"
        )
    marks = ", ".join(f"region{i + 1} <region>" for i in range(len(regions)))
    history: list[dict] = []
    saved = 0  # images written so far: the conversation's images are numbered in order

    def reply_to(message: str) -> str:
        nonlocal saved
        text = message if "<image>" in message or history or image is None else f"<image> {message}"
        if not history and regions and "<region>" not in text:
            text = f"{text} ({marks})"
        messages = [*history, {"role": "user", "content": text}]
        try:
            reply = model.chat(image, messages, regions, progress=True)
        except ValueError as error:  # the conversation or a prompt, with what is wrong
            raise CliError(str(error)) from None
        history.extend([messages[-1], {"role": "assistant", "content": reply.text}])
        lines = [reply.text] + [f"{route} {json.dumps(found.to_json())}" for route, found in reply.results.items()]
        if args.save_vis and reply.results:
            from visionllm.vis import draw_result

            args.save_vis.parent.mkdir(parents=True, exist_ok=True)
            draw_result(image, next(iter(reply.results.values())), min_side=384).save(args.save_vis)
        for made in reply.images:
            height, width = made.pixels.shape[:2]
            if prefix is None:
                lines.append(f"image {width}x{height}: {made.prompt} (not saved: give --save-images PREFIX)")
                continue
            path = prefix.with_name(f"{prefix.name}_{saved}.png")
            Image.fromarray(made.pixels).save(path)
            saved += 1
            lines.append(f"image {path} ({width}x{height}): {made.prompt}")
        return "\n".join(lines)

    if args.message is not None:
        print(reply_to(args.message))
        return
    about = "the image" if image is not None else "anything (no image: ask it to draw one)"
    print(f"chat with the model about {about}; an empty line or Ctrl-D ends", file=sys.stderr)
    for line in sys.stdin:
        if not line.strip():
            break
        print(reply_to(line.strip()), flush=True)


def _cmd_demo(args: argparse.Namespace) -> None:
    from visionllm.demo import run_demo

    if not args.model.exists():
        raise CliError(f"model folder {args.model} not found (train one with `make train-default`)")
    if args.web:
        _serve(args.model, host="127.0.0.1", port=args.port)
        return
    print(run_demo(args.model, args.out, images=args.images))


def _cmd_serve(args: argparse.Namespace) -> None:
    import os

    from visionllm.serve.images import ImageLimits

    for folder in args.image_dir:
        if not folder.is_dir():
            raise CliError(f"--image-dir {folder} is not a folder")
    limits = ImageLimits(max_bytes=args.max_image_bytes, max_pixels=args.max_pixels, image_dirs=tuple(args.image_dir))
    _serve(
        args.model,
        host=args.host,
        port=args.port,
        model_id=args.model_id,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        max_queue=args.max_queue,
        max_queued_tokens=args.max_queued_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        limits=limits,
        api_key=args.api_key or os.environ.get("VISIONLLM_API_KEY") or None,
    )


def _serve(model_dir: Path, host: str, port: int, model_id: str | None = None, **settings) -> None:
    import uvicorn

    from visionllm.serve.app import ServerSettings, create_app

    if not model_dir.exists():
        raise CliError(f"model folder {model_dir} not found (train one with `make train-default`)")
    _check_port_free(host, port)
    model = _load_model(model_dir)
    own_limit = model.config.max_prompt_tokens
    if (settings.get("max_prompt_tokens") or 0) > own_limit:
        raise CliError(
            f"--max-prompt-tokens {settings['max_prompt_tokens']} is over the model's own limit of {own_limit} "
            "(max_prompt_tokens in its config.json)"
        )
    name = model_id or model_dir.resolve().name
    app = create_app(model, ServerSettings(model_id=name, **settings))
    auth = " (API key required on /v1/*)" if settings.get("api_key") else ""
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.get("api_key"):
        print(f"warning: serving on {host} without --api-key: anyone who can reach this port can use it", flush=True)
    print(f"serving {name} at http://{host}:{port}/ : web page at /, OpenAI API at /v1{auth}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port that cannot be bound, before the model is loaded."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise CliError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise CliError(f"cannot listen on {host}:{port} ({error.strerror}): choose another --port") from None


def _cmd_export(args: argparse.Namespace) -> None:
    import torch

    model = _load_model(args.source)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[args.dtype]
    folder = model.save_pretrained(args.target, dtype=dtype)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"wrote {folder} ({size / 1e6:.1f} MB)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what was wrong and where the help is, without the whole usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _quiet_component_loading() -> None:
    """No progress bar per loaded component (transformers draws one for every set of weights it reads)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    """The options of how an image decoder samples: steps, text guidance and seed."""
    parser.add_argument("--steps", type=_POSITIVE, help="denoising steps (default: the decoder's config)")
    parser.add_argument(
        "--guidance", type=_number(0.0), help="text guidance scale; 1 runs no unguided pass (default: the decoder's)"
    )
    parser.add_argument(
        "--seed",
        type=_whole(0, 2**32 - 1),
        default=0,
        help="the starting noise: the same seed, the same image (default 0)",
    )


def _add_scene_flags(parser: argparse.ArgumentParser, out: str, train: int, val: int, person: float) -> None:
    """The flags of `data shapes` and `data coco`: where, how many images, and how scenes are sampled."""
    parser.add_argument("--out", type=Path, required=True, help=out)
    parser.add_argument("--train", type=_whole(0), default=train, help=f"training images (default {train})")
    parser.add_argument("--val", type=_whole(0), default=val, help=f"validation images (default {val})")
    parser.add_argument("--size", type=_whole(64, 512), default=128, help="image side in pixels, 64..512 (default 128)")
    parser.add_argument("--seed", type=_whole(0), default=0, help="dataset seed (default 0)")
    parser.add_argument("--min-objects", type=_whole(0), default=1, help="objects per image, at least (default 1)")
    parser.add_argument("--max-objects", type=_POSITIVE, default=6, help="objects per image, at most (default 6)")
    parser.add_argument(
        "--person-probability",
        type=_number(0.0, 1.0),
        default=person,
        help=f"chance an object is a person (default {person:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    from visionllm.formats.task_table import TASK_TABLE

    parser = _Parser(prog="visionllm", description="VisionLLM: vision tasks through language.")
    parser.add_argument("--version", action="version", version=f"visionllm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate and inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    shapes = data_commands.add_parser(
        "shapes",
        help="write a ShapesWorld dataset in the public formats (COCO, RefCOCO, VQAv2, LLaVA, ...)",
        description="Write a ShapesWorld dataset, deterministic by seed. See docs/data.md for the layout.",
    )
    _add_scene_flags(shapes, "dataset folder to write", 1000, 500, 0.15)
    shapes.add_argument(
        "--holdout",
        type=_holdout_pairs,
        default=(),
        metavar="'COLOR SHAPE,...'",
        help="colour-shape pairs never drawn in train, e.g. 'purple star,green hexagon'",
    )
    shapes.add_argument("--contact-sheet", type=Path, help="also write a PNG of samples with annotations drawn")
    shapes.add_argument("--quiet", action="store_true", help="no progress bar")
    shapes.set_defaults(func=_cmd_data_shapes)

    coco = data_commands.add_parser(
        "coco",
        help="write a plain COCO instances set of chosen shapes (e.g. ones ShapesWorld never draws)",
        description="Write images and COCO instances files (boxes, polygons) of the chosen shapes: a small set of "
        "categories a ShapesWorld model has never seen, to try `visionllm finetune` on (docs/finetune.md).",
    )
    _add_scene_flags(coco, "folder to write (images/, annotations/)", 400, 100, 0.0)
    coco.add_argument(
        "--shapes",
        type=_shape_names,
        default=("cross", "diamond", "arrow", "crescent"),
        help="comma-separated shapes (default: cross,diamond,arrow,crescent; also heart and ShapesWorld's own)",
    )
    coco.add_argument("--quiet", action="store_true", help="no progress bar")
    coco.set_defaults(func=_cmd_data_coco)

    info = data_commands.add_parser("info", help="summarise a ShapesWorld dataset")
    info.add_argument("root", type=Path, help="dataset folder")
    info.set_defaults(func=_cmd_data_info)

    sheet = data_commands.add_parser("sheet", help="draw samples of a ShapesWorld split with their annotations")
    sheet.add_argument("root", type=Path, help="dataset folder")
    sheet.add_argument("--split", default="val", choices=("train", "val"))
    sheet.add_argument("--out", type=Path, required=True, help="PNG to write")
    sheet.add_argument("--count", type=_POSITIVE, default=8, help="images on the sheet (default 8)")
    sheet.set_defaults(func=_cmd_data_sheet)

    train = commands.add_parser("train", help="train a model from a preset (see configs/)")
    train.add_argument("--config", type=Path, required=True, help="preset YAML with model: and train: sections")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the run")
    train.add_argument("--max-steps", type=_POSITIVE, help="override train.max_steps")
    train.set_defaults(func=_cmd_train)

    tune = commands.add_parser(
        "finetune",
        help="fine-tune a model on your own COCO-format data (new categories are new phrases)",
        description="Fine-tune a v1 or v2 model on annotation files of your own: COCO instances (boxes, polygons), "
        "keypoints or captions, or LLaVA JSON (--train-json, format read from the file); any mix, and RefCOCO or "
        "VQAv2, through a data config (--data, see docs/finetune.md). The val set is scored before and after.",
    )
    tune.add_argument("--model", type=Path, required=True, help="the checkpoint folder to start from")
    tune.add_argument("--train-json", type=Path, help="training annotations (COCO instances, keypoints, captions)")
    tune.add_argument("--train-images", type=Path, help="folder of the training images")
    tune.add_argument("--val-json", type=Path, help="val annotations, scored before and after (COCO metrics)")
    tune.add_argument("--val-images", type=Path, help="folder of the val images")
    tune.add_argument("--data", type=Path, help="a YAML data config (train: and val: lists of sources) instead")
    budget = tune.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=_number(0.01), help="training time budget in minutes")
    budget.add_argument("--steps", type=_POSITIVE, help="training steps")
    tune.add_argument("--out", type=Path, required=True, help="the model folder to write (a new or empty folder)")
    tune.add_argument("--lr", type=_number(1e-8, 1.0), help="learning rate (default: the model version's)")
    tune.add_argument("--batch-size", type=_POSITIVE, help="images per step (default: the model version's)")
    tune.add_argument("--eval-every", type=_whole(0), default=0, help="also score the val set every N steps")
    tune.add_argument("--eval-images", type=_POSITIVE, help="score the first N val images only")
    tune.add_argument("--skip-bad", action="store_true", help="leave malformed annotations out (counted)")
    tune.add_argument("--workers", type=_whole(0), default=0, help="image-reading processes (default 0: none)")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune in --out")
    tune.add_argument("--no-baseline", action="store_true", help="do not score the val set before training")
    tune.set_defaults(func=_cmd_finetune)

    memory = commands.add_parser(
        "memory",
        help="a preset's parameters, memory per GPU (DDP, ZeRO-2/3) and weight sources, without building it",
    )
    memory.add_argument("--config", type=Path, required=True, help="preset YAML (e.g. configs/paper_v2.yaml)")
    memory.add_argument("--gpus", type=_POSITIVE, default=1, help="GPUs the training is shared among (default 1)")
    memory.set_defaults(func=_cmd_memory)

    evaluate = commands.add_parser("eval", help="evaluate a model on a COCO-format set or a ShapesWorld split")
    evaluate.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    evaluate.add_argument("--coco-json", type=Path, help="COCO annotations; its category names are the class set")
    evaluate.add_argument("--images", type=Path, help="folder of the COCO file's images")
    evaluate.add_argument("--task", default="detect", choices=("detect", "segment", "keypoints"))
    evaluate.add_argument(
        "--points", type=_whole(3), default=16, help="boundary points for --task segment (default 16)"
    )
    evaluate.add_argument(
        "--shapesworld", type=Path, help="a ShapesWorld folder: the metric of every task the model answers"
    )
    evaluate.add_argument("--split", default="val", choices=("train", "val"))
    evaluate.add_argument("--tasks", help="ShapesWorld tasks, comma-separated (default: every task the model answers)")
    evaluate.add_argument("--limit", type=_POSITIVE, help="evaluate on the first N images only")
    evaluate.add_argument(
        "--no-controls",
        action="store_true",
        help="ShapesWorld: skip the controls of caption and vqa (scores on swapped images, question-only prior)",
    )
    evaluate.add_argument("--out", type=Path, help="also write the metrics JSON here")
    evaluate.set_defaults(func=_cmd_eval)

    predict = commands.add_parser(
        "predict",
        help="answer one instruction about one image (prints JSON), or about many (--input: a results file)",
        description="One image: the answer printed as JSON. Many (--input a folder or a COCO file): COCO results "
        "written to --out, in batches, resumable after a kill, and on several processes under torchrun or "
        "accelerate launch (docs/SCALING.md).",
    )
    predict.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    predict.add_argument("--image", type=Path, help="one image")
    predict.add_argument("--input", type=Path, help="a folder of images, or a COCO file (with --images)")
    predict.add_argument("--images", type=Path, help="the folder of --input's COCO file_name entries")
    predict.add_argument("--out", type=Path, help="the results file --input writes (COCO results JSON)")
    predict.add_argument("--batch-size", type=_POSITIVE, default=8, help="images per model call with --input")
    predict.add_argument(
        "--task", default="detection", choices=[task.value for task in TASK_TABLE], help="the task (default detection)"
    )
    predict.add_argument("--instruction", help="a free instruction instead of --task (add <image> where it goes)")
    predict.add_argument("--classes", help="comma-separated class set for detection / segmentation")
    predict.add_argument("--expression", help="referring expression for grounding")
    predict.add_argument("--question", help="question for vqa")
    predict.add_argument("--points", type=_whole(3), default=16, help="boundary points for segmentation")
    predict.add_argument(
        "--min-score", type=_number(0.0, 1.0), default=0.3, help="leave out weaker detections (default 0.3)"
    )
    predict.add_argument("--save-vis", type=Path, help="write the image with the result drawn on it")
    predict.set_defaults(func=_cmd_predict)

    chat = commands.add_parser(
        "chat",
        help="chat with a v2 model about an image, or without one (one message, or lines from the terminal)",
        description="Chat with a VisionLLM v2 model about one image, or without one (a model with a generation "
        "decoder draws what it is asked for: 'Draw a red circle.'). Visual prompts mark regions the message can "
        "ask about (as region1 <region>, region2 <region>, ... in the order given: points, boxes, masks). Each "
        "reply is printed, then one line per routing token it wrote with what its decoder found, as JSON "
        '(e.g. [DET] [{"class_name": "star", "score": 0.9, "box_xyxy_px": [...]}]).',
    )
    chat.add_argument("--model", type=Path, required=True, help="a v2 checkpoint folder")
    chat.add_argument("--image", type=Path, help="the image to talk about (default: none, e.g. 'Draw a red circle.')")
    chat.add_argument("--message", help="one message to answer (default: read messages from standard input)")
    chat.add_argument("--point", type=float, nargs=2, action="append", metavar=("X", "Y"), help="a point prompt")
    chat.add_argument(
        "--box", type=float, nargs=4, action="append", metavar=("X1", "Y1", "X2", "Y2"), help="a box prompt"
    )
    chat.add_argument("--mask", type=Path, action="append", help="a mask prompt: a PNG of the image's size")
    chat.add_argument(
        "--save-vis", type=Path, help="draw what the last reply's routed decoder found (boxes, masks, keypoints) here"
    )
    chat.add_argument(
        "--save-images",
        type=Path,
        metavar="PREFIX",
        help="write the images replies make ([GEN], [EDIT]) as PREFIX_0.png, PREFIX_1.png, ... in the "
        "conversation's order (a .png ending of PREFIX is dropped); their paths are printed",
    )
    chat.set_defaults(func=_cmd_chat)

    generate = commands.add_parser(
        "generate",
        help="draw images of descriptions with a v2 model's generation decoder",
        description="Draw an image of each --prompt (text-to-image, the [GEN] route), all in one batch; each image "
        "starts from --seed's noise, so a batch gives the images its prompts give one at a time. With one prompt "
        "the image is --out itself; with N, --out x.png stands for x_0.png ... x_{N-1}.png, in the prompts' order.",
    )
    generate.add_argument("--model", type=Path, required=True, help="a v2 checkpoint folder with a generation decoder")
    generate.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="what to draw, e.g. 'a red circle left of a blue square' (repeatable)",
    )
    generate.add_argument(
        "--out", type=Path, required=True, help="PNG (or .jpg) to write; numbered for several prompts"
    )
    _add_sampling(generate)
    generate.set_defaults(func=_cmd_generate)

    edit = commands.add_parser(
        "edit",
        help="edit an image as instructed with a v2 model's editing decoder",
        description="Edit --image as each --instruction says (the [EDIT] route), all in one batch; an edit keeps the "
        "image's size. With one instruction the edit is --out itself; with N, --out y.png stands for y_0.png ... "
        "y_{N-1}.png, in the instructions' order.",
    )
    edit.add_argument("--model", type=Path, required=True, help="a v2 checkpoint folder with an editing decoder")
    edit.add_argument("--image", type=Path, required=True, help="the image to edit")
    edit.add_argument(
        "--instruction",
        action="append",
        required=True,
        help="how to change it, e.g. 'make the red circle green' (repeatable: several edits of the image)",
    )
    edit.add_argument("--out", type=Path, required=True, help="PNG (or .jpg) to write; numbered for several edits")
    _add_sampling(edit)
    edit.add_argument(
        "--image-guidance", type=_number(0.0), help="how closely the edit keeps to the image (default: the decoder's)"
    )
    edit.set_defaults(func=_cmd_edit)

    demo = commands.add_parser("demo", help="run a model on new ShapesWorld images for every task it answers")
    demo.add_argument("--model", type=Path, default=Path("checkpoints/visionllm-v1-tiny"), help="checkpoint folder")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the annotated pictures")
    demo.add_argument("--images", type=_POSITIVE, default=4, help="how many new images (default 4)")
    demo.add_argument("--web", action="store_true", help="serve the web page on 127.0.0.1 instead (see serve)")
    demo.add_argument("--port", type=_PORT, default=8000, help="port for --web (default 8000)")
    demo.set_defaults(func=_cmd_demo)

    serve = commands.add_parser(
        "serve",
        help="serve a model over HTTP: OpenAI-compatible API, /v1/predict and the web page",
        description="Serve a model: POST /v1/chat/completions (OpenAI), POST /v1/predict, GET /v1/models, "
        "GET /health, and the web page at /. Concurrent requests are batched. See docs/serving.md.",
    )
    serve.add_argument("--model", type=Path, default=Path("checkpoints/visionllm-v1-tiny"), help="checkpoint folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_PORT, default=8000, help="port (default 8000)")
    serve.add_argument("--model-id", help="the model name clients send (default: the folder's name)")
    serve.add_argument("--max-batch-size", type=_POSITIVE, default=8, help="most requests per model call (default 8)")
    serve.add_argument(
        "--max-wait-ms", type=_number(0.0), default=10.0, help="how long a request waits to share a batch (default 10)"
    )
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (or set VISIONLLM_API_KEY)")
    serve.add_argument(
        "--image-dir",
        type=Path,
        action="append",
        default=[],
        help="allow requests to name image files inside this folder (repeatable; default: none)",
    )
    serve.add_argument(
        "--max-image-bytes", type=_POSITIVE, default=10 * 2**20, help="largest encoded image (default 10 MiB)"
    )
    serve.add_argument(
        "--max-pixels", type=_POSITIVE, default=4096 * 4096, help="largest image, width x height (default 4096 x 4096)"
    )
    serve.add_argument(
        "--max-body-bytes", type=_POSITIVE, default=16 * 2**20, help="largest request body (default 16 MiB)"
    )
    serve.add_argument(
        "--max-prompt-tokens",
        type=_POSITIVE,
        help="longest instruction accepted, in the LLM's tokens (default: the model's decoder.max_prompt_tokens)",
    )
    serve.add_argument(
        "--max-queue",
        type=_POSITIVE,
        default=256,
        help="requests waiting or running at most; more get 503 (default 256)",
    )
    serve.add_argument(
        "--max-queued-tokens",
        type=_POSITIVE,
        default=200_000,
        help="LLM tokens (prompt, image and longest answer) that waiting and running requests may add up to; "
        "more get 503 (default 200000)",
    )
    serve.set_defaults(func=_cmd_serve)

    export = commands.add_parser("export", help="re-save a checkpoint, e.g. in fp16 for shipping")
    export.add_argument("source", type=Path, help="checkpoint folder")
    export.add_argument("target", type=Path, help="folder to write")
    export.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    export.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed the usage and what was wrong (or --help, --version)
        return int(stop.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    _quiet_component_loading()
    try:
        code = args.func(args)
    except CliError as error:
        print(f"visionllm: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"visionllm: error: {error}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
