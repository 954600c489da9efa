"""The demo: run a model on freshly generated ShapesWorld images for every task it answers (v1's, and for a v2 model
also interactive segmentation from one click, a region caption, semantic segmentation, a star's keypoints and a chat
turn; with image decoders, one generation from a new drawing's prompt and one edit of that drawing), print a results
table and write annotated pictures."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from visionllm.data.shapes.dataset import make_image
from visionllm.data.shapes.drawings import make_drawing
from visionllm.data.shapes.scene import SKELETON, ShapesWorldConfig, render_scene
from visionllm.eval.runner import inner_point
from visionllm.formats.keypoints import STAR_KEYPOINT_NAMES, STAR_SKELETON
from visionllm.formats.results import Detections, GeneratedImage, SegmentationMap, TextAnswer
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.loading import load_pretrained
from visionllm.vis import contact_sheet, draw_detections, draw_segmentation, draw_text_below

logger = logging.getLogger(__name__)

SHAPE_CLASSES = ["circle", "square", "triangle", "star", "hexagon", "person"]


def run_demo(model_dir: str | Path, out: str | Path, images: int = 4, seed: int = 2026) -> str:
    """Answer every task of the model's version on `images` new ShapesWorld images; write one PNG per answer and a
    sheet. A model with image decoders also draws a new drawing's prompt and edits that drawing (its default steps;
    `drawing_source.png`, `drawing_edited.png`, `drawing_generated.png`, side by side on the sheet's last row).

    Returns:
        The results table as text.
    """
    model = load_pretrained(model_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    codec = model.config.codec()
    size = model.config.image_size
    records = [
        make_image(seed, "val", i, ShapesWorldConfig(image_size=size, person_probability=0.3)) for i in range(images)
    ]
    requests, pictures, labels, prompts = [], [], [], []
    for i, record in enumerate(records):
        picture = Image.fromarray(record.rendered.image)
        colours = sorted({f"{f.color} {f.category}" for f in record.facts if f.category != "person"})
        tasks = [
            ("detection", build_instruction(Task.DETECTION, classes=SHAPE_CLASSES, config=codec)),
            (
                "segmentation",
                build_instruction(Task.INSTANCE_SEGMENTATION, classes=SHAPE_CLASSES, num_points=16, config=codec),
            ),
            ("keypoints", build_instruction(Task.KEYPOINTS, config=codec)),
            ("caption", build_instruction(Task.CAPTION)),
        ]
        if colours:
            tasks.append(("detection (colours)", build_instruction(Task.DETECTION, classes=colours, config=codec)))
        if record.refs:
            tasks.append(
                ("grounding", build_instruction(Task.GROUNDING, expression=record.refs[0][1][0], config=codec))
            )
        if record.questions:
            tasks.append(("vqa", build_instruction(Task.VQA, question=record.questions[0].question)))
        marked: dict[str, list] = {}
        if model.version >= 2 and len(record.rendered.visible) and record.rendered.visible[0].any():
            click = ("point", inner_point(record.rendered.visible[0]))
            region = "region1 <region>"
            tasks.append(("interactive (click)", build_instruction(Task.INTERACTIVE_SEGMENTATION, regions=region)))
            tasks.append(("region caption", build_instruction(Task.REGION_CAPTION, regions=region)))
            tasks.append(("semantic", build_instruction(Task.SEMANTIC_SEGMENTATION, classes=SHAPE_CLASSES)))
            if any(f.category == "star" for f in record.facts):
                star = build_instruction(Task.KEYPOINTS, classes=["star"], keypoint_names=STAR_KEYPOINT_NAMES)
                tasks.append(("star keypoints", star))
            tasks.append(("chat", "What do you see in this picture?"))
            marked = {"interactive (click)": [click], "region caption": [click]}
        for name, instruction in tasks:
            requests.append(instruction)
            pictures.append(picture)
            labels.append((i, name, instruction))
            prompts.append(marked.get(name, []))
    extra = {"regions": prompts} if model.version >= 2 else {}
    results = model.predict(pictures, requests, min_score=0.3, **extra)
    lines = [f"{'image':>5}  {'task':<20} answer", f"{'-' * 5}  {'-' * 20} {'-' * 50}"]
    tiles = []
    for (i, name, instruction), picture, result in zip(labels, pictures, results, strict=True):
        prediction = result.prediction
        if isinstance(prediction, SegmentationMap):
            summary = ", ".join(n for k, n in enumerate(prediction.class_names, 1) if (prediction.labels == k).any())
            tile = draw_text_below(draw_segmentation(picture, prediction, scale=3.0), [f"#{i} {name}"])
        elif isinstance(prediction, Detections):
            summary = (
                ", ".join(f"{n} {s:.2f}" for n, s in zip(prediction.class_names, prediction.scores, strict=True))
                or "(nothing)"
            )
            drawn = draw_detections(
                picture, prediction, skeleton=STAR_SKELETON if "star" in name else SKELETON, scale=3.0
            )
            detail = instruction.class_names[0] if name == "grounding" else ""
            tile = draw_text_below(drawn, [f"#{i} {name}" + (f": {detail}" if detail else "")])
        else:
            text = prediction.text if isinstance(prediction, TextAnswer) else ""
            summary = text
            question = [instruction.text.split("question: ")[-1]] if name == "vqa" else []
            question = [instruction] if name == "chat" else question
            tile = draw_text_below(
                picture.resize((size * 3, size * 3), Image.NEAREST), [f"#{i} {name}", *question, f"-> {text}"]
            )
        lines.append(f"{i:>5}  {name:<20} {summary[:90]}")
        tile.save(out / f"{i:02d}_{name.replace(' ', '_').replace('(', '').replace(')', '')}.png")
        tiles.append(tile)
    drawn = _imagine(model, seed)
    if drawn:
        tiles += [Image.new("RGB", (1, 1), (255, 255, 255))] * (-len(tiles) % 4)  # the drawing's tiles on a new row
    for name, row, tile in drawn:
        if row is not None:
            lines.append(row)
        tile.save(out / f"drawing_{name}.png")
        tiles.append(tile)
    contact_sheet(tiles, columns=4).save(out / "demo_sheet.png")
    if drawn:
        lines.append("\nd0: a new drawing, edited as its edit says and drawn again from its prompt")
    lines.append(f"\npictures: {out}/ (demo_sheet.png shows them all)")
    return "\n".join(lines)


def _imagine(model, seed: int) -> list[tuple[str, str | None, Image.Image]]:
    """A new drawing (ShapesWorld's text-to-image data, at the model's image size) edited as its edit says and made
    from its prompt, by the model's editing and generation decoders (those it has), at their default steps.

    Returns:
        (file name, table row or None, tile) for the drawing to edit (no row), its edit and its generation.
    """
    tasks = set(model.TASKS)
    if not tasks & {Task.GENERATION, Task.EDITING}:
        return []
    size = model.config.image_size
    drawing = make_drawing(seed, "val", 0, ShapesWorldConfig(image_size=size))
    source = Image.fromarray(render_scene(drawing.scene).image)

    def tile(picture: Image.Image, lines: list[str]) -> Image.Image:
        return draw_text_below(picture.resize((size * 3, size * 3), Image.NEAREST), lines)

    def row(task: str, image: GeneratedImage) -> str:
        height, width = image.pixels.shape[:2]
        return f"{'d0':>5}  {task:<20} {image.prompt[:60]!r} -> a {width}x{height} image"

    out: list[tuple[str, str | None, Image.Image]] = []
    if Task.EDITING in tasks:
        edited = model.edit_image(source, drawing.instruction, seed=seed)[0]
        out.append(("source", None, tile(source, ["d0 drawing", drawing.prompt])))
        out.append(
            ("edited", row("editing", edited), tile(Image.fromarray(edited.pixels), ["d0 edited", edited.prompt]))
        )
    if Task.GENERATION in tasks:
        generated = model.text_to_image(drawing.prompt, seed=seed)[0]
        picture = Image.fromarray(generated.pixels)
        out.append(("generated", row("generation", generated), tile(picture, ["d0 generated", generated.prompt])))
    return out
