import random
from collections import Counter

import pytest

from visionllm.config import ConfigError
from visionllm.formats.tasks import Task
from visionllm.models.v1.data import TaskMixture
from visionllm.train.mix import MixConfig

DEFAULTS = ["red circle", "circle", "square", "triangle", "star", "hexagon", "person"]


def test_one_task_per_batch_and_a_deterministic_stream(micro_model, tiny_shapesworld):
    mix = MixConfig(tasks={"detection": 1.0, "instance_segmentation": 1.0, "caption": 1.0, "vqa": 1.0})
    stream = TaskMixture(tiny_shapesworld.root, "train", micro_model.processor, mix, seed=3, batch_size=4)
    batches = [[stream[b * 4 + j] for j in range(4)] for b in range(12)]
    for batch in batches:
        assert len({ex.task for ex in batch}) == 1
        assert len({ex.fmt for ex in batch}) == 1  # segmentation: one point count per batch too
    assert len({batch[0].task for batch in batches}) > 1
    again = TaskMixture(tiny_shapesworld.root, "train", micro_model.processor, mix, seed=3, batch_size=4)
    assert [again[i].instruction for i in range(8)] == [stream[i].instruction for i in range(8)]


def test_text_tasks_teach_the_tokenizer_the_default_classes(micro_model, tiny_shapesworld):
    mix = MixConfig(tasks={"caption": 1.0})
    stream = TaskMixture(
        tiny_shapesworld.root, "train", micro_model.processor, mix, batch_size=2, default_classes=DEFAULTS
    )
    for i in range(6):
        ex = stream[i]
        assert ex.task is Task.CAPTION
        objects = stream.objects[_sample(stream, ex).image_id]
        # Every object is a target, as the first default phrase that names it.
        assert len(ex.token_boxes_xyxy_px) == len(objects) == len(ex.token_class_index)
        for obj, index in zip(objects, ex.token_class_index, strict=True):
            colour = obj.attributes["color"]
            expected = 0 if (obj.category, colour) == ("circle", "red") else DEFAULTS.index(obj.category)
            assert index == expected


def _sample(stream: TaskMixture, example):
    """The sample an example was drawn from, found by its pixels."""
    for sample in stream.samples[Task.CAPTION]:
        if (stream.processor.image(sample.image_path).pixels == example.image.pixels).all():
            return sample
    raise AssertionError("example not found")


def test_freezing_the_visual_tokenizer_leaves_only_its_text_fusion_trainable(micro_model):
    model = micro_model
    try:
        model.freeze(["tokenizer_visual"])
        trainable = {n.split(".")[0] for n, p in model.tokenizer.named_parameters() if p.requires_grad}
        assert trainable == {"text_proj", "fusion"}
        assert not model.tokenizer.class_bias.requires_grad and not model.tokenizer.level_embed.requires_grad
    finally:
        model.tokenizer.requires_grad_(True)


def test_vqa_examples_ask_several_questions_of_one_image(micro_model, tiny_shapesworld):
    mix = MixConfig(tasks={"vqa": 1.0}, questions_per_image=3)
    stream = TaskMixture(tiny_shapesworld.root, "train", micro_model.processor, mix)
    packed = 0
    for k in range(30):
        sample = stream.samples[Task.VQA][k % len(stream.samples[Task.VQA])]
        ex = stream.example(Task.VQA, sample, random.Random(k))
        mine = [s for s in stream.questions[sample.image_id] if s is not sample]
        image_first = ex.instruction.index("<image>") < ex.instruction.index(sample.qa.question)
        assert len(ex.branches) == (min(2, len(mine)) if image_first else 0)
        # The other questions are this image's, each asked once, in the first question's template, with answers.
        template = ex.instruction.replace(sample.qa.question, "{question}")
        offered = Counter(
            (template.format(question=s.qa.question), Counter(s.qa.answers).most_common(1)[0][0]) for s in mine
        )
        assert not Counter(ex.branches) - offered  # (a question may be asked twice of an image, with one answer)
        packed += bool(ex.branches)
    assert packed > 10
    single = TaskMixture(tiny_shapesworld.root, "train", micro_model.processor, MixConfig(tasks={"vqa": 1.0}))
    assert all(not single[i].branches for i in range(10))


def test_a_vqa_example_asks_at_least_one_question():
    with pytest.raises(ConfigError, match="questions_per_image"):
        MixConfig(tasks={"vqa": 1.0}, questions_per_image=0)
