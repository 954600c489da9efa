"""What clients send and get back: the `/v1/predict` and OpenAI chat schemas, and how a request becomes an
instruction.

A chat message becomes an instruction in this order:
1. `visionllm.task` in the request (OpenAI clients pass it with `extra_body`) builds it from the task table;
2. text containing `<image>` is used as the instruction itself;
3. text starting with a command: `detect: a, b`, `segment: a, b`, `ground: <expression>`, `keypoints`,
   `caption` (or `describe`);
4. any other text is a question about the image (VQA) for a v1 model, the next turn of the conversation for a v2
   model; no text at all asks for a caption.

A v2 model also reads the earlier turns of the conversation, and visual prompts: `visionllm.regions` (in the
extra body of chat, or `regions` in `/v1/predict`), each {"kind": "point" | "box" | "scribble" | "polygon" |
"mask", "data": ...} in the image's pixels (a mask as a PNG data URL, nonzero inside). Each fills one `<region>`
of the conversation, in order; a last user message without `<region>` is given "region1 <region>, ..." first.

A v2 model with image decoders also makes images: the `generation` task (a `description`, no image), the `editing`
task (an image and an `edit`), or a chat reply whose [GEN] / [EDIT] calls made some; `seed`, `steps`, `guidance`
and `image_guidance` set how they are sampled. A chat conversation without an image is taken by a v2 model only.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from visionllm.formats.codec import CodecError
from visionllm.formats.prompts import RegionError, RegionPrompt, prompt_mask
from visionllm.formats.results import Decoded, Detections, GeneratedImage, SegmentationMap, TextAnswer
from visionllm.formats.task_table import TASK_TABLE, Instruction, build_instruction
from visionllm.formats.tasks import Task
from visionllm.formats.tokens import IMAGE, CodecConfig
from visionllm.models.common.inputs import ProcessorError, check_text
from visionllm.serve.errors import RequestError
from visionllm.serve.images import ImageLimits, load_image

REGION = "<region>"
MAX_STEPS = 200
"""The most denoising steps a request may ask for (each is a pass of the image decoder)."""
MAX_GUIDANCE = 50.0
"""The highest guidance scale a request may ask for (text or image)."""


class RegionSpec(BaseModel):
    """One visual prompt, in pixels of the request's image."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["point", "box", "scribble", "polygon", "mask"]
    data: list[float] | list[list[float]] | str = Field(
        ...,
        description="point [x, y]; box [x1, y1, x2, y2]; scribble or polygon [[x, y], ...]; mask: a PNG data URL "
        "of the image's size, nonzero inside",
    )


class TaskParams(BaseModel):
    """How to build the instruction: a task and its fields, or a free instruction."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, description="one of the served tasks, e.g. 'detection'")
    instruction: str | None = Field(None, description="a free instruction instead of a task; <image> marks the image")
    classes: list[str] = Field(default_factory=list, description="class set (detection, instance_segmentation)")
    expression: str | None = Field(None, description="referring expression (grounding)")
    question: str | None = Field(None, description="question (vqa)")
    points: int = Field(16, ge=3, strict=True, description="boundary points per object (instance_segmentation)")
    min_score: float = Field(
        0.3, ge=0.0, le=1.0, strict=True, description="leave out detections scored below this (a number in [0, 1])"
    )
    regions: list[RegionSpec] = Field(
        default_factory=list,
        max_length=16,
        description="visual prompts (v2: region captions, interactive segmentation, region questions)",
    )
    description: str | None = Field(None, description="what to draw (generation), e.g. 'a red circle'")
    edit: str | None = Field(None, description="how to change the image (editing), e.g. 'make the circle green'")
    seed: int = Field(0, ge=0, lt=2**32, strict=True, description="the starting noise of an image made")
    steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, strict=True, description="denoising steps of an image made (the model's default)"
    )
    guidance: float | None = Field(
        None, ge=0.0, le=MAX_GUIDANCE, strict=True, description="text guidance scale (the model's default)"
    )
    image_guidance: float | None = Field(
        None, ge=0.0, le=MAX_GUIDANCE, strict=True, description="an edit's image guidance scale (the model's default)"
    )

    def sampling(self) -> dict[str, Any]:
        """How a v2 model samples the images it makes (`predict`'s seed, steps, guidance, image_guidance)."""
        options = {"seed": self.seed, "steps": self.steps, "guidance": self.guidance}
        return options | {"image_guidance": self.image_guidance}


class PredictRequest(TaskParams):
    """`POST /v1/predict`."""

    model: str | None = Field(None, description="the served model's id (optional)")
    image: str | None = Field(
        None, description="data URL (data:image/png;base64,...), bare base64, or an allowed path; none for generation"
    )
    render: StrictBool = Field(False, description="also return the picture with the result drawn (a PNG data URL)")


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions` (OpenAI's fields we do not use, such as temperature, are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: StrictBool = False
    visionllm: TaskParams | None = None


def build_request_instruction(
    params: TaskParams,
    codec: CodecConfig,
    tasks: list[Task],
    version: int = 1,
    earlier_regions: int = 0,
) -> Instruction | str:
    """The instruction a request asks for.

    Args:
        params: the request's task and fields, or its free instruction.
        codec: the model's codec sizes.
        tasks: the tasks the model answers.
        version: the model's version: v1 needs `<image>` in a free instruction (added at its end when missing);
            v2 places the image itself.
        earlier_regions: `<region>` placeholders the earlier turns hold (their prompts come first in `regions`).

    Raises:
        RequestError: 400 with what is missing or wrong (unknown task, no classes, too many classes, text that is
            not valid Unicode, regions for a model or task that takes none, ...).
    """
    _check_unicode(params)
    regions = len(params.regions)
    if regions and version < 2:
        raise RequestError(400, "visual prompts (regions) need a v2 model; this server runs a v1 model", "regions")
    if params.instruction is not None:
        text = params.instruction.strip()
        if not text:
            raise RequestError(400, "the instruction is empty", "instruction")
        count = text.count(IMAGE)
        if count > 1:
            raise RequestError(400, f"the instruction has {count} {IMAGE} markers; show the image once", "instruction")
        if version >= 2:
            return _with_regions(text, regions - earlier_regions)
        return text if count == 1 else f"{text} The image is {IMAGE}."
    if params.task is None:
        raise RequestError(400, "give a task (one of " + ", ".join(t.value for t in tasks) + ") or an instruction")
    try:
        task = Task(params.task)
    except ValueError:
        task = None
    if task not in tasks:
        known = ", ".join(t.value for t in tasks)
        raise RequestError(400, f"this model does not answer the task {params.task!r}; it answers: {known}", "task")
    classes = [c.strip() for c in params.classes if c.strip()]
    if task in (Task.DETECTION, Task.INSTANCE_SEGMENTATION) and not classes:
        raise RequestError(400, f'{task.value} needs classes, e.g. ["red circle", "square"]', "classes")
    if task is Task.VQA and not (params.question or "").strip():
        raise RequestError(400, "vqa needs a question", "question")
    if task is Task.GROUNDING and not (params.expression or "").strip():
        raise RequestError(400, 'grounding needs an expression, e.g. "the red circle on the left"', "expression")
    description, edit = _phrase(params.description), _phrase(params.edit)
    if task is Task.GENERATION and not description:
        example = '"a red circle left of a blue square"'
        raise RequestError(400, f"generation needs a description of the image to make, e.g. {example}", "description")
    if task is Task.EDITING and not edit:
        raise RequestError(400, 'editing needs an edit, e.g. "make the red circle green"', "edit")
    takes_regions = "regions" in TASK_TABLE[task].fields
    if takes_regions and not regions:
        example = 'regions: [{"kind": "point", "data": [x, y]}]'
        raise RequestError(400, f"{task.value} needs a visual prompt, e.g. {example}", "regions")
    if regions and not takes_regions:
        raise RequestError(400, f"{task.value} takes no visual prompts; send them as a chat turn", "regions")
    try:
        return build_instruction(
            task,
            classes=classes,
            expression=(params.expression or "").strip() or None,
            question=(params.question or "").strip() or None,
            num_points=params.points,
            regions=_region_marks(regions) if regions else None,
            description=description,
            edit=edit,
            config=codec,
        )
    except CodecError as error:
        raise RequestError(400, str(error), _param_of(str(error))) from None


def check_image(instruction: Instruction | str, shown: bool, param: str, free_turn: bool = False) -> None:
    """Refuse a request that shows an image where its task takes none (generation), or none where it reads one
    (every other task, and a free instruction unless `free_turn`).

    Args:
        instruction: the request's instruction.
        shown: whether the request comes with an image.
        param: where the image goes in the request: "image" (/v1/predict) or "messages" (chat).
        free_turn: whether a free instruction may come without an image (a v2 model's chat turn).

    Raises:
        RequestError: 400 saying what to send or leave out.
    """
    task = instruction.task if isinstance(instruction, Instruction) else None
    if task is Task.GENERATION and shown:
        where = "leave out `image`" if param == "image" else "leave the image out of the conversation"
        raise RequestError(400, f"generation makes an image from its description alone: {where}", param)
    reads = TASK_TABLE[task].reads_image if task is not None else not free_turn
    if reads and not shown:
        what = task.value if task is not None else "an instruction"
        where = '"image": "data:image/png;base64,..."' if param == "image" else _IMAGE_PART
        raise RequestError(400, f"{what} reads an image: send one ({where})", param)


_IMAGE_PART = '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}'


def _phrase(text: str | None) -> str | None:
    """A description or edit as a template's phrase (the template adds the full stop), or None when empty."""
    return (text or "").strip().rstrip(" .") or None


def _region_marks(count: int) -> str:
    """ "region1 <region>, region2 <region>" for `count` prompts."""
    return ", ".join(f"region{k} {REGION}" for k in range(1, count + 1))


def _with_regions(text: str, count: int) -> str:
    """A v2 chat turn with its prompts' placeholders: the text's own `<region>`s, or marks put first."""
    if count and REGION not in text:
        return f"{_region_marks(count)} {text}"
    return text


def _check_unicode(params: TaskParams) -> None:
    fields = {"task": params.task, "instruction": params.instruction, "expression": params.expression}
    fields |= {"question": params.question, "description": params.description, "edit": params.edit}
    fields |= {f"classes[{i}]": name for i, name in enumerate(params.classes)}
    for name, value in fields.items():
        try:
            check_text(value or "", name)
        except ProcessorError as error:
            raise RequestError(400, str(error), name.split("[")[0], "invalid_text") from None


def _param_of(message: str) -> str | None:
    for name in ("classes", "points", "question", "expression"):
        if name.rstrip("s") in message or name in message:
            return name
    return None


_TEXT_FIELD = {
    Task.VQA.value: "question",
    Task.GROUNDING.value: "expression",
    Task.GENERATION.value: "description",
    Task.EDITING.value: "edit",
}
"""The field a chat message's text fills for a task named in the extra body (when the body leaves it empty)."""

_COMMAND = re.compile(r"^\s*(detect|segment|ground|keypoints|caption|describe)\b\s*:?\s*(.*)$", re.I | re.S)


def history_from_chat(request: ChatRequest) -> list[dict[str, str]]:
    """The turns before the last user message, as {"role": "user" | "assistant", "content": text} (system and
    tool messages and image parts left out): what a v2 model reads before the request."""
    last = max(k for k, m in enumerate(request.messages) if m.role == "user")
    turns = []
    for message in request.messages[:last]:
        if message.role in ("user", "assistant"):
            turns.append({"role": message.role, "content": _message_text(message)})
    return turns


def _message_text(message: ChatMessage) -> str:
    if isinstance(message.content, str):
        return message.content.strip()
    parts = message.content if isinstance(message.content, list) else []
    return "\n".join(p.text for p in parts if p.type == "text" and p.text).strip()


def params_from_chat(request: ChatRequest, version: int = 1) -> tuple[str | None, TaskParams]:
    """The image reference (last image of the user messages) and the task parameters of a chat request; for a
    v2 model (`version` 2) text that is no command is the conversation's next turn, and the conversation may show
    no image (the reference is then None: "Draw a red circle left of a blue square.").

    Raises:
        RequestError: no user message, or no image for a v1 model.
    """
    images: list[str] = []
    last_user_text: str | None = None
    for message in request.messages:
        if message.role != "user":
            continue
        texts = []
        if isinstance(message.content, str):
            texts.append(message.content)
        for part in message.content if isinstance(message.content, list) else []:
            if part.type == "text":
                texts.append(part.text or "")
            elif part.image_url is None:
                raise RequestError(400, 'an image_url part needs image_url: {"url": "data:image/..."}', "messages")
            else:
                images.append(part.image_url if isinstance(part.image_url, str) else part.image_url.url)
        last_user_text = "\n".join(t for t in texts if t).strip()
    if last_user_text is None:
        raise RequestError(400, "the conversation has no user message", "messages")
    if not images and version < 2:
        raise RequestError(400, f"VisionLLM answers about an image: add a content part {_IMAGE_PART}", "messages")
    image = images[-1] if images else None
    if request.visionllm is not None and (request.visionllm.task or request.visionllm.instruction):
        params = request.visionllm.model_copy()
        field = _TEXT_FIELD.get(params.task or "")
        if field is not None and not getattr(params, field):  # the message's text is the task's one field
            setattr(params, field, last_user_text)
        return image, params
    extra = request.visionllm.model_dump(exclude={"task", "instruction"}) if request.visionllm else {}
    fields = _params_from_text(last_user_text)
    if version >= 2 and fields.get("task") in (Task.VQA.value, None) and last_user_text:
        fields = {"instruction": last_user_text}  # v2 converses: a question is the next turn, not a VQA template
    fields |= {k: v for k, v in extra.items() if v}  # explicit fields win
    return image, TaskParams(**fields)


def _params_from_text(text: str) -> dict[str, Any]:
    if IMAGE in text:
        return {"instruction": text}
    if not text:
        return {"task": Task.CAPTION.value}
    match = _COMMAND.match(text)
    if not match:
        return {"task": Task.VQA.value, "question": text}
    command, rest = match.group(1).lower(), match.group(2).strip()
    if command in ("detect", "segment"):
        classes = [c.strip(" .;") for c in re.split(r",|\band\b", rest) if c.strip(" .;")]
        return {"task": "detection" if command == "detect" else "instance_segmentation", "classes": classes}
    if command == "ground":
        return {"task": Task.GROUNDING.value, "expression": rest.rstrip(" .")}
    if command == "keypoints":
        return {"task": Task.KEYPOINTS.value}
    return {"task": Task.CAPTION.value}


def answer_body(instruction: Instruction | str, image_size: tuple[int, int] | None, decoded: Decoded) -> dict[str, Any]:
    """What /v1/predict answers (after its id and model) and chat carries in `visionllm`; `image_size` (width,
    height) of the request's image, None (null) for a request without one."""
    if isinstance(instruction, Instruction):
        task, text = instruction.task.value, instruction.text
    else:
        task, text = "instruction", instruction
    size = list(image_size) if image_size is not None else None
    return {"task": task, "instruction": text, "image_size": size, **result_json(decoded)}


def result_json(decoded: Decoded) -> dict[str, Any]:
    """The structured answer: `{"output": "detections", "detections": [...]}`, `{"output": "masks",
    "class_names": [...], "masks_rle": {...}}` (semantic segmentation), `{"output": "image", "image": <PNG data URL>,
    "prompt", "seed", "width", "height"}` (generation, editing) or `{"output": "text", "text": ...}` (with `routed`:
    what the decoders found for each routing token a v2 reply wrote, and `images`: what its [GEN] / [EDIT] calls
    made, each as an image answer's fields)."""
    prediction = decoded.prediction
    body: dict[str, Any]
    if isinstance(prediction, Detections):
        body = {"output": "detections", "detections": prediction.to_json()}
    elif isinstance(prediction, SegmentationMap):
        body = {"output": "masks", **prediction.to_json()}
    elif isinstance(prediction, GeneratedImage):
        body = {"output": "image", **prediction.to_json()}
    else:
        body = {"output": "text", **prediction.to_json()}
    body["dropped"] = [{"slot": d.slot, "reason": d.reason} for d in decoded.dropped]
    return body


def answer_text(decoded: Decoded) -> str:
    """The answer in words (the chat message's content, or its text part beside the images made)."""
    prediction = decoded.prediction
    if isinstance(prediction, TextAnswer):
        return prediction.text
    if isinstance(prediction, GeneratedImage):
        height, width = prediction.pixels.shape[:2]
        return f"Here is the image ({width}x{height} pixels)."
    if isinstance(prediction, SegmentationMap):
        found = [name for k, name in enumerate(prediction.class_names, 1) if (prediction.labels == k).any()]
        return "Segmented: " + ", ".join(found) + "." if found else "None of the classes is in the image."
    if not len(prediction):
        return "No objects found."
    items = []
    for item in prediction.to_json():
        x1, y1, x2, y2 = item["box_xyxy_px"]
        items.append(f"{item['class_name']} ({item['score']:.2f}) at [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]")
    noun = "object" if len(items) == 1 else "objects"
    return f"{len(items)} {noun}: " + "; ".join(items) + "."


def message_content(text: str, body: dict[str, Any]) -> str | list[dict[str, Any]]:
    """The assistant message's `content`: the text alone, or, when the answer made images (`body`: its
    `answer_body`), OpenAI content parts: the text, then one `image_url` part per image (a PNG data URL)."""
    made = [body] if body["output"] == "image" else body.get("images", [])
    if not made:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    return parts + [{"type": "image_url", "image_url": {"url": image["image"]}} for image in made]


def region_prompts(specs: list[RegionSpec], size_wh: tuple[int, int], limits: ImageLimits) -> tuple[RegionPrompt, ...]:
    """The request's visual prompts, checked against its image (each must mark part of it).

    Raises:
        RequestError: 400 naming the prompt: coordinates of the wrong shape, a mask that is no image of the
            image's size, or a prompt outside the image.
    """
    prompts = []
    for k, spec in enumerate(specs):
        param = f"regions[{k}]"
        if spec.kind == "mask":
            if not isinstance(spec.data, str):
                raise RequestError(400, f"{param}: a mask is a PNG data URL of the image's size", param)
            data: Any = np.asarray(load_image(spec.data, limits, param).convert("L")) > 0
        elif isinstance(spec.data, str):
            raise RequestError(400, f"{param}: a {spec.kind} is given by coordinates, not a string", param)
        else:
            data = spec.data
        prompt = RegionPrompt(spec.kind, data)
        try:
            prompt_mask(prompt, size_wh)
        except RegionError as error:
            raise RequestError(400, f"{param}: {error}", param, "invalid_region") from None
        prompts.append(prompt)
    return tuple(prompts)
