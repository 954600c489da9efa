"""The task table: task -> paraphrased instruction templates -> output format.

Templates are data. Placeholders: {classes} the class binding ({"red circle": <c0>, ...}),
{range} the coordinate range R, {tuple} the output tuple in words (it carries the point count),
{points} the number of boundary points, {question}, {expression} (a referring expression),
{keypoint_names}, {regions} (v2 region prompts such as "region1 <region>"), {description}
(text-to-image) and {edit} (an editing request). `<image>` appears exactly once in each template of a task
that reads an image, and in none of text-to-image's.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass

from visionllm.formats.codec import CodecError, OutputFormat, OutputKind, bind_classes
from visionllm.formats.keypoints import COCO_KEYPOINT_NAMES
from visionllm.formats.tasks import Task
from visionllm.formats.tokens import IMAGE, CodecConfig


@dataclass(frozen=True)
class TaskSpec:
    """One row of the task table.

    Attributes:
        task: the task.
        output: the kind of answer.
        templates: paraphrased instruction templates (see the module docstring for placeholders).
        fields: what a request for the task must give besides the image (the names of `build_instruction`'s
            arguments as the server and the page call them: classes, points, expression, question, regions,
            description, edit).
        version: 1 for tasks v1 answers, 2 for tasks that need v2's parts.
        routed: the same request for a model that answers through routing tokens and decoders (v2): no codec
            words, {classes} a plain list; empty where `templates` already read so.
        reads_image: whether a request shows an input image (`<image>` once); text-to-image's show none.
        answered: False for a task the table words but no model answers yet (it is left out of
            `tasks_of_version`, so the CLI, the server and the evaluation do not offer it).
    """

    task: Task
    output: OutputKind
    templates: tuple[str, ...]
    fields: tuple[str, ...] = ()
    version: int = 1
    routed: tuple[str, ...] = ()
    reads_image: bool = True
    answered: bool = True

    @property
    def requests(self) -> tuple[str, ...]:
        """The templates a routing model reads: `routed`, or `templates` where they need no codec."""
        return self.routed or self.templates

    @property
    def result(self) -> str:
        """What a client gets back: "text", "detections" (boxes, polygons, keypoints), "masks" or "image"."""
        if self.output in (OutputKind.TEXT, OutputKind.MASKS, OutputKind.IMAGE):
            return self.output.value
        return "detections"


_DETECTION = (
    "Please examine the image and identify all objects in the category set {classes}. For each object, specify its "
    "location within the range {range} by determining the top-left and bottom-right corners of its bounding box. "
    "Provide the output in the format {tuple}, where c is the class index starting from 0 and (x1, y1, x2, y2) are "
    "the offsets of the box corners relative to the center point. The image is: <image>",
    "The image is <image>. Detect every instance of the classes {classes} and give each as {tuple} with "
    "coordinates in the range {range}.",
    "Find all {classes} in <image>. Answer with one {tuple} per object; coordinates are offsets within range {range}.",
    "Here is an image: <image>. Locate each object belonging to {classes}. Output format: {tuple}, "
    "range {range}, c being the class index.",
    "Object detection. Categories: {classes}. Coordinate range: {range}. Output: {tuple} for every object. "
    "Image: <image>",
    "<image> Draw a bounding box around every object from {classes}; report each box as {tuple} "
    "using offsets in [-{range}, {range}].",
    "Look at <image> and list the bounding boxes of all objects whose category is in {classes}, "
    "as {tuple} within range {range}.",
    "Can you detect the objects of these categories {classes} in the image <image>? Give the class index and the "
    "top-left and bottom-right corners, {tuple}, in range {range}.",
    "Identify and localize all instances of {classes} in this picture <image>. Use the format {tuple} "
    "with coordinates quantized to range {range}.",
    "For the image <image>, output the class and box of each object in the category set {classes}. "
    "Each answer is {tuple}; the coordinate range is {range}.",
    "I need the boxes of everything from {classes} in <image>. Please answer with {tuple} tuples, range {range}.",
    "Detect: {classes}. Format {tuple}. Range {range}. The image is <image>.",
)

_SEGMENTATION = (
    "Segment the objects from the image with class labels from {classes} and output their coordinates within "
    "range {range}. The coordinates should be given as the boundary points relative to the center point, and the "
    "output format should be {tuple}, where c is the index of the class label that starts from 0. The image is: "
    "<image>",
    "The image is <image>. Outline every object of the classes {classes} with {points} boundary points each, "
    "as {tuple} within range {range}.",
    "Instance segmentation of <image>: categories {classes}; describe each mask by {points} points on its "
    "contour, format {tuple}, range {range}.",
    "Please trace the boundary of each object in {classes} that appears in <image>. Use {points} points, "
    "output {tuple}, coordinates in range {range}.",
    "<image> For every instance of {classes}, give its polygon with {points} vertices in the format {tuple} "
    "(range {range}).",
    "Find all objects from {classes} in the image <image> and give their outlines as {points}-point polygons: "
    "{tuple}, range {range}.",
    "Segment {classes} in <image>. Each object: {tuple}, with {points} boundary points, offsets within {range}.",
    "Here is an image <image>. Produce instance masks for the categories {classes} as polygons of {points} "
    "points ({tuple}); the range is {range}.",
    "Give the contour of each object belonging to {classes} in <image>, sampled at {points} points, "
    "as {tuple} in range {range}.",
    "Mask every {classes} object in <image>. Output one {tuple} per object ({points} points, range {range}).",
    "Could you segment all instances of {classes} in this image <image>? Please describe each one by "
    "{points} boundary points: {tuple}, range {range}.",
)

_GROUNDING = (
    "Please find the object in the category set {classes} within the range {range}. Please provide the output "
    "in the format {tuple}, where c is the class index starting from 0, and (x1, y1, x2, y2) are the offsets of "
    "the top-left and bottom-right corners of the bounding box relative to the center point. The image is: <image>",
    "The image is <image>. Locate the object described by {classes} and give its box as {tuple} in range {range}.",
    "Where is the object referred to in {classes}? Image: <image>. Answer {tuple}, range {range}.",
    "<image> Find the region that matches the description {classes}. Output {tuple} with range {range}.",
    "Ground the expression {classes} in the image <image>: return one box {tuple} within range {range}.",
    "In <image>, which object does {classes} refer to? Give its bounding box as {tuple} (range {range}).",
    "Referring expression: {classes}. Image: <image>. Box format {tuple}, coordinates in range {range}.",
    "Please box the object that {classes} describes in this picture <image>; use {tuple}, range {range}.",
    "Look at <image> and point out {classes} with a bounding box in the format {tuple}, range {range}.",
    "Localize the described object {classes} in <image>. Answer with {tuple} where coordinates lie in "
    "[-{range}, {range}].",
    "Show me where {classes} is in the image <image>. Format: {tuple}. Range: {range}.",
)

_KEYPOINTS = (
    "Please detect every object of {classes} in the image <image> and locate its keypoints {keypoint_names} "
    "within the range {range}. Output {tuple} for each, with an invisible point given as <p-inv>.",
    "The image is <image>. For each instance of {classes}, find the 17 body keypoints ({keypoint_names}) and "
    "answer {tuple} in range {range}; write <p-inv> for points that are not visible.",
    "Estimate the pose of every {classes} in <image>. Keypoints: {keypoint_names}. Format {tuple}, range {range}.",
    "<image> Locate the keypoints of each person in {classes}: {keypoint_names}. Give {tuple} with coordinates "
    "in range {range}.",
    "Keypoint detection for {classes} in the image <image>: output the class and the keypoints "
    "{keypoint_names} as {tuple}, range {range}.",
    "Find everyone in {classes} in <image> and mark their joints ({keypoint_names}). Answer {tuple}; "
    "range {range}; invisible joints are <p-inv>.",
    "I need the skeleton of each object of {classes} in this picture <image>. Points in order: {keypoint_names}. "
    "Output {tuple}, range {range}.",
    "Human pose estimation. Classes: {classes}. Keypoints: {keypoint_names}. Output format {tuple}. "
    "Coordinate range {range}. Image: <image>",
    "For the image <image>, give the body keypoints of all {classes} instances as {tuple} within "
    "range {range} (order: {keypoint_names}).",
    "Can you pinpoint the keypoint locations {keypoint_names} of every {classes} in <image>? "
    "Use {tuple} and range {range}.",
)

_CAPTION = (
    "The image is <image>. Please generate a caption for the image: ",
    "The image is <image>. Write a caption:",
    "<image> Describe this image in one sentence.",
    "Give a short description of the picture <image>.",
    "What does this image show? <image> Answer with a caption.",
    "Here is a picture: <image>. Caption it briefly.",
    "<image> Write a one-line caption for this image.",
    "Please describe the image <image> in a few words.",
    "Summarize the content of <image> in a sentence.",
    "Caption the following image. <image>",
    "Look at <image> and tell me briefly what is in it.",
)

_VQA = (
    "The image is <image>. Please generate an answer for the image according to the question: {question}",
    "The image is <image>. Please generate an answer according to the question: {question}.",
    "<image> Question: {question} Answer:",
    "Look at the image <image> and answer the question: {question}",
    "Answer the question about the image <image> with a word or a short phrase. {question}",
    "{question} Answer using the image <image>.",
    "Here is an image: <image>. {question} Reply briefly.",
    "Given <image>, {question}",
    "Based on the picture <image>, what is the answer to: {question}",
    "Q: {question} Image: <image> A:",
    "Please answer this question about <image>: {question}",
)

_CHAT = (
    "<image>\n{question}",
    "{question}\n<image>",
    "USER: <image> {question} ASSISTANT:",
    "<image> {question}",
    "Here is an image <image>. {question}",
    "Look at this picture: <image>. {question}",
    "I have a question about this image <image>: {question}",
    "<image>\nPlease help me with this: {question}",
    "Take a look at <image>. {question}",
    "With this image <image> in mind: {question}",
)

_REGION_CAPTION = (
    "USER: <image> Please describe the object in {regions} briefly. ASSISTANT:",
    "<image> What is in {regions}? Describe it in a few words.",
    "Give a short caption of the region {regions} of the image <image>.",
    "The image is <image>. Describe the object marked by {regions}.",
    "<image> Can you tell me what {regions} shows?",
    "What object is at {regions} in <image>?",
    "Describe {regions} in the image <image> with a short phrase.",
    "Here is an image <image>. What do you see in {regions}?",
    "<image> Please caption {regions}.",
    "Look at {regions} in <image> and describe it.",
)

_INTERACTIVE_SEGMENTATION = (
    "USER: <image> Could you please segment all the corresponding objects according to the visual prompts as "
    "{regions}? ASSISTANT:",
    "<image> Segment the object indicated by {regions}.",
    "Please give the mask of the object that {regions} points at in <image>.",
    "The image is <image>. Cut out the object marked by {regions}.",
    "<image> Which object does {regions} select? Segment it.",
    "Segment {regions} in the image <image>.",
    "Here is an image <image>. Produce a mask for the object at {regions}.",
    "<image> Outline the object under {regions}.",
    "Give me the segmentation of {regions} in <image>.",
    "Use the visual prompt {regions} to segment the object in <image>.",
)

_SEMANTIC_SEGMENTATION = (
    "<image> Please produce a semantic segmentation of the image for the classes {classes}.",
    "The image is <image>. Label every pixel with one of {classes}.",
    "Semantic segmentation of <image> over the categories {classes}.",
    "Segment the image <image> into the classes {classes}.",
    "<image> Give the semantic mask for {classes}.",
    "Which pixels of <image> belong to each of {classes}? Produce a label map.",
    "Please parse the scene <image> into {classes}.",
    "Assign each pixel of the image <image> to one of these classes: {classes}.",
    "<image> Semantic segmentation, classes {classes}.",
    "Create a per-pixel class map of <image> using the categories {classes}.",
)

_GROUNDED_CAPTION = (
    "<image> Please describe the image and give a box for each object you mention.",
    "The image is <image>. Write a caption and ground every noun phrase in it.",
    "Describe <image> briefly, with the location of each object you name.",
    "<image> Give a grounded caption of this image.",
    "Caption the image <image> and localize the objects in your caption.",
    "What is in <image>? Mention each object together with its bounding box.",
    "<image> Write one sentence about the image; mark the objects it names with boxes.",
    "Please produce a caption for <image> whose phrases carry boxes.",
    "Here is an image <image>. Describe it and point out where each thing is.",
    "Generate a grounded description of the picture <image>.",
)

_GENERATION = (
    "Please generate an image of {description}.",
    "Draw {description}.",
    "Create a picture showing {description}.",
    "Generate an image: {description}.",
    "Can you make an image of {description}?",
    "Please paint {description}.",
    "Render {description} as an image.",
    "I would like an image with {description}.",
    "Make a picture of {description}.",
    "Produce an image that shows {description}.",
)

_EDITING = (
    "<image> {edit}",
    "Edit the image <image>: {edit}",
    "Here is an image <image>. Please {edit}.",
    "Change the picture <image> as follows: {edit}",
    "<image> Apply this edit: {edit}",
    "Please modify <image> so that you {edit}.",
    "Take <image> and {edit}.",
    "Image editing. Input: <image>. Instruction: {edit}",
    "<image> Can you {edit}?",
    "Given the image <image>, {edit}.",
)

_ROUTED_DETECTION = (
    "<image> Please detect {classes} in the image.",
    "Find every {classes} in <image>.",
    "Detect the following categories in <image>: {classes}.",
    "<image> Locate all objects of the classes {classes}.",
    "Where are the {classes} in the image <image>?",
    "Here is an image <image>. Detect the objects of these categories: {classes}.",
)

_ROUTED_SEGMENTATION = (
    "<image> Segment every instance of {classes}.",
    "Please give the instance masks of {classes} in <image>.",
    "<image> Instance segmentation for the categories {classes}.",
    "Segment each object of the classes {classes} in the image <image>.",
    "Here is an image <image>. Outline every {classes} with a mask.",
)

_ROUTED_GROUNDING = (
    "<image> Where is {expression}?",
    "Please locate {expression} in <image>.",
    "<image> Find {expression}.",
    "Ground this phrase in the image <image>: {expression}.",
    "Here is an image <image>. Give the location of {expression}.",
)

_ROUTED_KEYPOINTS = (
    "<image> Find the keypoints {keypoint_names} of each {classes}.",
    "Detect the {classes} in <image> and their keypoints: {keypoint_names}.",
    "<image> Pose estimation of {classes}, points: {keypoint_names}.",
    "Here is an image <image>. Locate every {classes} and its points {keypoint_names}.",
)

TASK_TABLE: dict[Task, TaskSpec] = {
    spec.task: spec
    for spec in (
        TaskSpec(Task.DETECTION, OutputKind.BOXES, _DETECTION, ("classes",), routed=_ROUTED_DETECTION),
        TaskSpec(
            Task.INSTANCE_SEGMENTATION,
            OutputKind.POLYGONS,
            _SEGMENTATION,
            ("classes", "points"),
            routed=_ROUTED_SEGMENTATION,
        ),
        TaskSpec(Task.GROUNDING, OutputKind.BOXES, _GROUNDING, ("expression",), routed=_ROUTED_GROUNDING),
        TaskSpec(Task.KEYPOINTS, OutputKind.KEYPOINTS, _KEYPOINTS, routed=_ROUTED_KEYPOINTS),
        TaskSpec(Task.CAPTION, OutputKind.TEXT, _CAPTION),
        TaskSpec(Task.VQA, OutputKind.TEXT, _VQA, ("question",)),
        TaskSpec(Task.CHAT, OutputKind.TEXT, _CHAT, ("question",), version=2),
        TaskSpec(Task.REGION_CAPTION, OutputKind.TEXT, _REGION_CAPTION, ("regions",), version=2),
        TaskSpec(Task.INTERACTIVE_SEGMENTATION, OutputKind.MASKS, _INTERACTIVE_SEGMENTATION, ("regions",), version=2),
        TaskSpec(Task.SEMANTIC_SEGMENTATION, OutputKind.MASKS, _SEMANTIC_SEGMENTATION, ("classes",), version=2),
        TaskSpec(Task.GROUNDED_CAPTION, OutputKind.TEXT, _GROUNDED_CAPTION, version=2, answered=False),
        TaskSpec(Task.GENERATION, OutputKind.IMAGE, _GENERATION, ("description",), version=2, reads_image=False),
        TaskSpec(Task.EDITING, OutputKind.IMAGE, _EDITING, ("edit",), version=2),
    )
}


def tasks_of_version(version: int) -> list[Task]:
    """The tasks a model of this version answers, in table order (tasks no model answers yet left out)."""
    return [task for task, spec in TASK_TABLE.items() if spec.version <= version and spec.answered]


def build_request(
    task: Task | str,
    *,
    classes: Sequence[str] = (),
    expression: str | None = None,
    question: str | None = None,
    keypoint_names: Sequence[str] = COCO_KEYPOINT_NAMES,
    regions: str | None = None,
    description: str | None = None,
    edit: str | None = None,
    template: int | random.Random = 0,
) -> str:
    """A request in the words of a model that answers through routing tokens (v2): the task's `requests`
    template filled with plain fields (classes as "red circle, star", point names with spaces).

    Raises:
        CodecError: a field the template needs is missing, or the template index is out of range.
    """
    task = Task(task)
    requests = TASK_TABLE[task].requests
    index = template.randrange(len(requests)) if isinstance(template, random.Random) else int(template)
    if not 0 <= index < len(requests):
        raise CodecError(f"{task.value} has request templates 0..{len(requests) - 1}, not {index}")
    if task is Task.KEYPOINTS and not classes:
        classes = ("person",)
    values = {
        "classes": ", ".join(classes) if classes else None,
        "question": question,
        "expression": expression,
        "keypoint_names": ", ".join(name.replace("_", " ") for name in keypoint_names),
        "regions": regions,
        "description": description,
        "edit": edit,
    }
    return _filled(requests[index], values, f"a {task.value} request")


def _filled(template: str, values: dict[str, object], what: str) -> str:
    """The template with its fields filled; `what` names it in errors.

    Raises:
        CodecError: a field it needs is None, or the fields add an `<image>`.
    """
    missing = sorted(name for name in template_fields(template) if values.get(name) is None)
    if missing:
        raise CodecError(f"{what} needs {', '.join(missing)}")
    text = template.format(**values)
    if text.count(IMAGE) != template.count(IMAGE):
        placed = "places it once" if IMAGE in template else "shows no image"
        raise CodecError(f"the fields of {what.split(' ', 1)[1]} must not contain {IMAGE}: the template {placed}")
    return text


def template_fields(template: str) -> set[str]:
    """The placeholders a template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@dataclass(frozen=True)
class Instruction:
    """A rendered instruction and what its answer must look like.

    Attributes:
        text: the instruction, with `<image>` once.
        task: the task it asks for.
        output_format: the answer's format (None for v2 outputs outside the token grammar: masks, images).
        class_names: the bound class set (<ci> is class_names[i]); empty for text tasks.
        keypoint_names: the skeleton's point names of a keypoint request; empty for other tasks.
        prompt: what an image request asks for: the description (text-to-image) or the edit; empty for others.
    """

    text: str
    task: Task
    output_format: OutputFormat | None
    class_names: tuple[str, ...] = ()
    keypoint_names: tuple[str, ...] = ()
    prompt: str = ""


def build_instruction(
    task: Task | str,
    *,
    classes: Sequence[str] = (),
    expression: str | None = None,
    question: str | None = None,
    num_points: int = 16,
    keypoint_names: Sequence[str] = COCO_KEYPOINT_NAMES,
    regions: str | None = None,
    description: str | None = None,
    edit: str | None = None,
    template: int | random.Random = 0,
    config: CodecConfig = CodecConfig(),
) -> Instruction:
    """Render an instruction for a task from the task table.

    Args:
        task: which task.
        classes: the class set (detection, segmentation, keypoints: "person" by default, semantic segmentation).
        expression: the referring expression (grounding); it becomes the one bound class.
        question: the question (VQA, chat).
        num_points: boundary points per object (instance segmentation).
        keypoint_names: the skeleton's point names (keypoints).
        regions, description, edit: v2 tasks' fields.
        template: a template index, or a random generator to draw one (training uses paraphrases).
        config: codec sizes (range, limits).

    Raises:
        CodecError: a field the task needs is missing, or a limit is exceeded.
    """
    task = Task(task)
    spec = TASK_TABLE[task]
    index = template.randrange(len(spec.templates)) if isinstance(template, random.Random) else int(template)
    if not 0 <= index < len(spec.templates):
        raise CodecError(f"{task.value} has templates 0..{len(spec.templates) - 1}, not {index}")
    if task is Task.GROUNDING:
        if not expression:
            raise CodecError("grounding needs an expression, e.g. 'the leftmost red circle'")
        classes = (expression,)
    if task is Task.KEYPOINTS and not classes:
        classes = ("person",)
    fmt: OutputFormat | None = {
        OutputKind.BOXES: OutputFormat.boxes,
        OutputKind.POLYGONS: lambda: OutputFormat.polygons(num_points),
        OutputKind.KEYPOINTS: lambda: OutputFormat.keypoints(len(keypoint_names)),
        OutputKind.TEXT: OutputFormat.text,
    }.get(spec.output, lambda: None)()
    if fmt is not None:
        fmt.validate(config)
    values = {
        "classes": bind_classes(classes, config) if classes else None,
        "range": config.coord_range,
        "tuple": fmt.tuple_text() if fmt is not None else None,
        "points": num_points,
        "question": question,
        "expression": expression,
        "keypoint_names": ", ".join(keypoint_names),
        "regions": regions,
        "description": description,
        "edit": edit,
    }
    text = _filled(spec.templates[index], values, f"a {task.value} instruction")
    binds = (fmt is not None and fmt.structured) or task is Task.SEMANTIC_SEGMENTATION
    names = tuple(keypoint_names) if task is Task.KEYPOINTS else ()
    prompt = {Task.GENERATION: description, Task.EDITING: edit}.get(task) or ""
    return Instruction(text, task, fmt, tuple(str(c).strip() for c in classes) if binds else (), names, prompt)
