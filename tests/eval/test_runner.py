"""The ShapesWorld runner's controls, with fake predictors whose answers do or do not depend on the image."""

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionllm.data.shapes.load import load_split
from visionllm.eval.runner import evaluate_shapesworld
from visionllm.formats.results import Decoded, TextAnswer
from visionllm.formats.task_table import Instruction, build_instruction
from visionllm.formats.tasks import Task

needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="caption metrics need Java for pycocoevalcap's PTB tokenizer"
)
BLIND = {"BLEU-4_blind", "CIDEr_blind", "vqa_accuracy_blind"}


def _pixel_mean(path: Path) -> float:
    return round(float(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).mean()), 6)


class Recorder:
    """A fake predictor that records the (image, instruction text) pairs it is asked about."""

    version = 1

    def __init__(self) -> None:
        self.calls: list[tuple[Path, str]] = []

    def predict(
        self, images: Sequence[Path], instructions: Sequence[Instruction], min_score: float = 0.05
    ) -> list[Decoded]:
        pairs = [(Path(image), instruction.text) for image, instruction in zip(images, instructions, strict=True)]
        self.calls += pairs
        return [Decoded(TextAnswer(self.answer(image, text))) for image, text in pairs]

    def answer(self, image: Path, instruction: str) -> str:
        raise NotImplementedError


class ImageReader(Recorder):
    """Answers from the image: recognises it by its pixel mean and gives that image's true answer."""

    def __init__(self, root: Path, split: str = "val") -> None:
        super().__init__()
        self.truth: dict[tuple[float, str], str] = {}
        for s in load_split(root, split, Task.CAPTION):
            self.truth[_pixel_mean(s.image_path), build_instruction(Task.CAPTION).text] = s.captions[0]
        for s in load_split(root, split, Task.VQA):
            self.truth[_pixel_mean(s.image_path), build_instruction(Task.VQA, question=s.qa.question).text] = (
                s.qa.answers[0]
            )

    def answer(self, image: Path, instruction: str) -> str:
        return self.truth.get((_pixel_mean(image), instruction), "")


class Constant(Recorder):
    """Answers without looking at the image."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def answer(self, image: Path, instruction: str) -> str:
        return self.text


def test_the_fake_tells_the_images_apart(tiny_shapesworld):
    images = sorted(tiny_shapesworld.image_dir("val").glob("*.png"))
    assert len({_pixel_mean(p) for p in images}) == len(images) >= 2


def test_blind_vqa_asks_the_same_questions_of_other_images(tiny_shapesworld):
    reader = ImageReader(tiny_shapesworld.root)
    metrics = evaluate_shapesworld(reader, tiny_shapesworld.root, tasks=("vqa",), progress=False)
    assert metrics["vqa_accuracy"] == pytest.approx(1.0)
    assert metrics["vqa_accuracy_blind"] < metrics["vqa_accuracy"]
    # The same by question type (ShapesWorld's: counting, colour, shape, existence, relations).
    types = {k.removeprefix("vqa_accuracy") for k in metrics if k.startswith("vqa_accuracy[")}
    assert "[how many]" in types and len(types) >= 3
    assert all(metrics["vqa_accuracy" + t] == pytest.approx(1.0) for t in types)
    assert {k.removeprefix("vqa_accuracy_blind") for k in metrics if k.startswith("vqa_accuracy_blind[")} == types

    seen, blind = reader.calls[: len(reader.calls) // 2], reader.calls[len(reader.calls) // 2 :]
    assert len(seen) == len(blind) == len(load_split(tiny_shapesworld.root, "val", Task.VQA))
    assert [text for _, text in blind] == [text for _, text in seen]  # questions unchanged
    assert all(b != s for (b, _), (s, _) in zip(blind, seen, strict=True))  # never its own image
    assert {image for image, _ in blind} == {image for image, _ in seen}  # only images of the evaluated set
    swap = {}
    for (image, _), (other, _) in zip(seen, blind, strict=True):
        assert swap.setdefault(image, other) == other  # one replacement per image, whatever the question


@needs_java
def test_blind_captions_score_lower_when_captions_come_from_the_image(tiny_shapesworld):
    reader = ImageReader(tiny_shapesworld.root)
    metrics = evaluate_shapesworld(reader, tiny_shapesworld.root, tasks=("caption",), progress=False)
    assert set(metrics) == {"BLEU-4", "CIDEr", "BLEU-4_blind", "CIDEr_blind"}
    assert metrics["CIDEr_blind"] < metrics["CIDEr"]
    assert metrics["BLEU-4_blind"] < metrics["BLEU-4"]
    seen, blind = reader.calls[:4], reader.calls[4:]
    assert all(b != s for (b, _), (s, _) in zip(blind, seen, strict=True))


@needs_java
def test_blind_scores_equal_the_scores_of_a_model_that_ignores_the_image(tiny_shapesworld):
    metrics = evaluate_shapesworld(Constant("yes"), tiny_shapesworld.root, tasks=("caption", "vqa"), progress=False)
    for name in ("BLEU-4", "CIDEr", "vqa_accuracy"):
        assert metrics[f"{name}_blind"] == metrics[name]


def test_the_prior_answers_with_the_train_answers(tiny_shapesworld, tmp_path):
    # Rewrite every train answer to one val answer: the prior then gives that answer to every question, seen
    # or not, and scores what a model giving it everywhere scores.
    answer = load_split(tiny_shapesworld.root, "val", Task.VQA)[0].qa.answers[0]
    root = Path(shutil.copytree(tiny_shapesworld.root, tmp_path / "w"))
    answers_path = tiny_shapesworld.vqa_annotations("train").relative_to(tiny_shapesworld.root)
    train = json.loads((root / answers_path).read_text())
    for annotation in train["annotations"]:
        for human in annotation["answers"]:
            human["answer"] = answer
    (root / answers_path).write_text(json.dumps(train))

    as_generated = evaluate_shapesworld(Constant(answer), tiny_shapesworld.root, tasks=("vqa",), progress=False)
    rewritten = evaluate_shapesworld(Constant(answer), root, tasks=("vqa",), progress=False)
    assert rewritten["vqa_prior"] == rewritten["vqa_accuracy"] > 0
    assert as_generated["vqa_prior"] != rewritten["vqa_prior"]  # it is the train answers that changed it


def test_controls_can_be_left_out(tiny_shapesworld):
    reader = ImageReader(tiny_shapesworld.root)
    metrics = evaluate_shapesworld(reader, tiny_shapesworld.root, tasks=("vqa",), progress=False, controls=False)
    assert {k for k in metrics if "[" not in k} == {"vqa_accuracy"}
    assert len(reader.calls) == len(load_split(tiny_shapesworld.root, "val", Task.VQA))  # one pass only


def test_a_blind_score_needs_two_images(tiny_shapesworld, caplog):
    # --limit 1 evaluates the first two questions, both of the first image: nothing to swap it with.
    metrics = evaluate_shapesworld(Constant("yes"), tiny_shapesworld.root, tasks=("vqa",), limit=1, progress=False)
    assert {k for k in metrics if "[" not in k} == {"vqa_accuracy", "vqa_prior"}
    assert "at least 2 distinct images" in caplog.text
