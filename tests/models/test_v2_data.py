"""v2's training conversations from ShapesWorld: every task answers in the routed format with aligned targets, the
stream is a function of its index, and the three stages run through the one training loop."""

import random
import re

import pytest
import torch
import yaml

from visionllm.formats.keypoints import COCO_KEYPOINT_NAMES, STAR_KEYPOINT_NAMES
from visionllm.formats.tasks import Task
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.data import IMAGE_TASKS, V2_TRAINING_TASKS, ChatMixture
from visionllm.models.v2.model import VisionLLMv2
from visionllm.train.loop import train
from visionllm.train.mix import MixConfig

ROUTES = re.compile(r"\[(DET|GRD|SEG|POSE)\]")


@pytest.fixture
def model(micro_v2):
    torch.manual_seed(0)
    return VisionLLMv2(VisionLLMv2Config.from_dict(micro_v2))


@pytest.fixture
def stream(model, tiny_shapesworld):
    mix = MixConfig(tasks={t.value: 1.0 for t in V2_TRAINING_TASKS}, questions_per_image=3, task_per_batch=False)
    return ChatMixture(tiny_shapesworld.root, "train", model.processor, mix, seed=3)


@pytest.mark.parametrize("task", V2_TRAINING_TASKS, ids=lambda t: t.value)
def test_each_task_answers_in_the_routed_format_with_aligned_targets(model, stream, task):
    for seed in range(4):
        rng = random.Random(seed)
        example = stream.example(task, rng.choice(stream.samples[task]), rng)
        answers = " ".join(t.text for t in example.turns if t.role == "assistant")
        routes = ROUTES.findall(answers)
        if task in IMAGE_TASKS:  # no image shown to draw; the drawing shown to edit; the target image to make
            route = "[GEN]" if task is Task.GENERATION else "[EDIT]"
            assert sum(t.text.count("<image>") for t in example.turns) == int(task is Task.EDITING)
            assert (example.image is not None) == (task is Task.EDITING)
            assert answers.endswith(route) and answers.count(route) == 1 and not routes
            assert len(answers.removesuffix(route).split()) >= 2  # the description or edit the queries read
            target = example.targets.image
            size = model.config.generation.image_size
            assert target.shape == (3, size, size) and target.min() >= -1 and target.max() <= 1
            continue
        assert sum(t.text.count("<image>") for t in example.turns) == 1
        assert sum(t.text.count("<region>") for t in example.turns) == len(example.regions)
        if not routes:
            assert example.targets is None and answers.strip()
            continue
        objects = example.targets.objects
        groups = [r for r in routes if r != "POSE"]
        assert len(objects.boxes) == len(objects.classes) and (objects.classes < len(groups)).all()
        assert ((objects.boxes >= 0) & (objects.boxes <= 1)).all()
        if task.value == "keypoints":
            assert groups == ["DET"] and example.targets.keypoints.shape[1] == routes.count("POSE")
        else:
            assert objects.masks is not None and objects.masks.shape[0] == len(objects.boxes)


def test_keypoint_conversations_name_a_person_or_a_star_skeleton(stream):
    skeletons = set()
    for seed, sample in enumerate(stream.samples[Task.KEYPOINTS]):
        example = stream.example(Task.KEYPOINTS, sample, random.Random(seed))
        answer = example.turns[1].text
        skeletons.add(answer.split(" [DET]")[0])
        names = re.findall(r"(?:\[DET\] |, )([a-z ]+) \[POSE\]", answer)
        allowed = {n.replace("_", " ") for n in (*COCO_KEYPOINT_NAMES, *STAR_KEYPOINT_NAMES)}
        assert names and set(names) <= allowed and example.targets.keypoints.shape[1] == len(names)
    assert skeletons == {"person", "star"}


def test_example_i_is_a_function_of_the_seed_and_i(stream):
    first, again = stream[17], stream[17]
    assert first.turns == again.turns and torch.equal(first.image.pixels, again.image.pixels)
    assert [stream[i].turns for i in range(8)] != [stream[i + 8].turns for i in range(8)]


def test_a_batch_of_every_task_trains_text_and_decoders(model, stream):
    batch = model.collate([stream.example(t, stream.samples[t][0], random.Random(0)) for t in V2_TRAINING_TASKS])
    losses = model(batch)
    assert torch.isfinite(losses["loss"]) and {"text", "boxes", "masks", "keypoints"} <= set(losses)
    assert all(losses[k] > 0 for k in ("text", "boxes", "masks", "keypoints"))


def test_the_three_stages_run_through_the_training_loop(tmp_path, tiny_shapesworld, micro_v2):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": micro_v2}))
    common = {"data": {"root": str(tiny_shapesworld.root)}, "batch_size": 4, "eval_every": 0, "save_every": 2}
    stages = {
        "one": {"model": {"objects": None, "keypoints": None},
                "train": {"mix": {"tasks": {"chat": 1.0, "vqa": 1.0, "region_caption": 1.0}}}},
        "two": {"train": {"init_from": str(tmp_path / "one" / "final"),
                          "mix": {"tasks": {"detection": 1.0, "keypoints": 1.0, "vqa": 1.0}}}},
        "three": {"train": {"init_from": str(tmp_path / "two" / "final"), "freeze": ["vision", "bridge", "regions",
                            "llm", "link"], "mix": {"tasks": {"instance_segmentation": 1.0, "keypoints": 1.0}}}},
    }  # fmt: skip
    finals = {}
    for name, stage in stages.items():
        stage["train"] |= common | {"output_dir": str(tmp_path / name), "max_steps": 2}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"base": "base.yaml", **stage}))
        finals[name] = VisionLLMv2.from_pretrained(train(tmp_path / f"{name}.yaml"))
    assert finals["one"].object_decoder is None and finals["two"].object_decoder is not None
    llm = {k: v for k, v in finals["two"].state_dict().items() if k.startswith(("llm.", "vision.", "link."))}
    after = finals["three"].state_dict()
    assert all(torch.equal(after[k], v) for k, v in llm.items())  # stage 3 keeps the chat model
    assert not all(
        torch.equal(after[k], v) for k, v in finals["two"].state_dict().items() if k.startswith("object_decoder.")
    )
