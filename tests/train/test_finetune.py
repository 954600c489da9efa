"""Fine-tuning on a user's own COCO-format data: the data set (new shapes), reading it (malformed annotations named
or skipped), class sets of its category names, the time budget, and `visionllm finetune` end to end (micro)."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

import visionllm.train.loop as loop
from visionllm.cli import main
from visionllm.config import ConfigError
from visionllm.data.readers import DatasetFormatError, read_coco_instances
from visionllm.data.sample import ObjectAnnotation
from visionllm.data.shapes.coco_set import image_dir, instances_path, write_coco_set
from visionllm.data.shapes.scene import NEW_SHAPES, SHAPES, ShapesWorldConfig, render_scene, sample_scene
from visionllm.data.sources import AnnotationSet, DatasetConfig, SourceConfig, guess_kind
from visionllm.formats.tasks import Task
from visionllm.models.loading import load_pretrained
from visionllm.models.v1.data import TaskMixture
from visionllm.train.mix import MixConfig, draw_class_set

NEW = ("cross", "diamond", "arrow", "crescent")


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    """A COCO instances set of four shapes ShapesWorld never draws: 6 train and 4 val images of 64 px."""
    root = tmp_path_factory.mktemp("coco") / "set"
    config = ShapesWorldConfig(image_size=64, shapes=NEW, person_probability=0.0, min_objects=1, max_objects=3)
    write_coco_set(root, 6, 4, config, seed=3, progress=False)
    return root


def sources(root, split="train"):
    return SourceConfig("coco_instances", str(instances_path(root, split)), str(image_dir(root, split)))


@pytest.mark.parametrize("shape", NEW_SHAPES)
def test_every_new_shape_draws_as_one_piece_of_its_own_colour(shape):
    config = ShapesWorldConfig(image_size=96, shapes=(shape,), person_probability=0.0, min_objects=1, max_objects=1)
    scene = sample_scene(np.random.default_rng(0), config)
    assert [o.category for o in scene.objects] == [shape]
    rendered = render_scene(scene)
    mask = rendered.masks[0]
    assert mask.sum() > 50
    assert (rendered.image[mask] == np.asarray(scene.objects[0].rgb)).all()


def test_the_base_world_draws_only_its_own_shapes_by_default():
    rng = np.random.default_rng(0)
    drawn = {o.category for _ in range(30) for o in sample_scene(rng, ShapesWorldConfig(person_probability=0)).objects}
    assert drawn <= set(SHAPES) and not drawn & set(NEW_SHAPES)
    with pytest.raises(ValueError, match="shapes must be distinct names"):
        ShapesWorldConfig(shapes=("blob",))


def test_the_coco_set_has_only_the_new_categories_and_reads_back(coco_set):
    samples = read_coco_instances(instances_path(coco_set, "train"), image_dir(coco_set, "train"))
    assert len(samples) == 6 and all(s.image_path.is_file() for s in samples)
    names = {o.category for s in samples for o in s.objects}
    assert names and names <= set(NEW)
    data = json.loads(instances_path(coco_set, "val").read_text())
    assert [c["name"] for c in data["categories"]] == list(NEW)
    assert guess_kind(instances_path(coco_set, "val")) == "coco_instances"


def test_the_coco_set_is_a_function_of_its_seed(coco_set, tmp_path):
    config = ShapesWorldConfig(image_size=64, shapes=NEW, person_probability=0.0, min_objects=1, max_objects=3)
    write_coco_set(tmp_path / "again", 6, 4, config, seed=3, progress=False)
    assert instances_path(tmp_path / "again", "val").read_text() == instances_path(coco_set, "val").read_text()


def _broken_copy(coco_set, tmp_path):
    data = json.loads(instances_path(coco_set, "train").read_text())
    data["annotations"][1]["bbox"] = [1, 2, "wide", 4]
    data["annotations"][2]["image_id"] = 999
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    return broken, data["annotations"][1]["id"], data["annotations"][2]["id"]


def test_a_malformed_annotation_is_named_or_skipped_and_counted(coco_set, tmp_path):
    broken, bad_box, dangling = _broken_copy(coco_set, tmp_path)
    with pytest.raises(DatasetFormatError, match=rf"broken\.json: annotation {dangling}: image_id 999"):
        read_coco_instances(broken, image_dir(coco_set, "train"))
    bad: list[str] = []
    samples = read_coco_instances(broken, image_dir(coco_set, "train"), bad)
    assert len(bad) == 2
    assert any(f"annotation {bad_box}: `bbox`" in e for e in bad) and any(f"annotation {dangling}" in e for e in bad)
    total = len(json.loads(broken.read_text())["annotations"])
    assert sum(len(s.objects) for s in samples) == total - 2
    skipped = AnnotationSet([SourceConfig("coco_instances", str(broken), str(image_dir(coco_set, "train")))], True)
    assert len(skipped.skipped) == 2


def test_guess_kind_tells_the_formats_apart(tmp_path):
    files = {
        "caps.json": ({"images": [], "annotations": [{"id": 1, "image_id": 1, "caption": "a"}]}, "coco_captions"),
        "kps.json": ({"images": [], "annotations": [{"id": 1, "keypoints": []}], "categories": []}, "coco_keypoints"),
        "chat.json": ([{"id": "1", "image": "a.png", "conversations": []}], "llava"),
    }
    for name, (data, kind) in files.items():
        (tmp_path / name).write_text(json.dumps(data))
        assert guess_kind(tmp_path / name) == kind
    (tmp_path / "odd.json").write_text(json.dumps({"questions": []}))
    with pytest.raises(DatasetFormatError, match=r"odd\.json: not a COCO instances"):
        guess_kind(tmp_path / "odd.json")


def test_class_sets_of_a_data_set_are_its_category_names():
    objects = [ObjectAnnotation((0, 0, 4, 4), "arrow", attributes={"color": "red"})]
    vocabulary = ["cross", "diamond", "arrow", "crescent"]
    mix = MixConfig(negative_rate=1.0)
    drawn = [draw_class_set(objects, mix, random.Random(seed), vocabulary) for seed in range(40)]
    assert {level for _, level in drawn} == {"category"}
    assert all(set(classes) <= set(vocabulary) for classes, _ in drawn)
    assert sum("arrow" in classes for classes, _ in drawn) >= 30  # present classes are mostly kept
    assert any(len(classes) > 1 for classes, _ in drawn)  # absent ones join as negatives


def test_a_v1_stream_over_a_data_set_asks_for_its_categories(coco_set, micro_model):
    data = AnnotationSet([sources(coco_set)])
    assert data.vocabulary == list(NEW) and data.tasks == [Task.DETECTION, Task.INSTANCE_SEGMENTATION]
    stream = TaskMixture(data, "train", micro_model.processor, MixConfig(tasks={"detection": 1.0}), seed=0)
    examples = [stream[i] for i in range(8)]
    named = {name for e in examples for name in e.class_names}
    assert named and named <= set(NEW)
    assert any(len(e.class_index) for e in examples)


def test_the_budget_counts_training_time_and_drives_the_schedule(monkeypatch):
    clock = iter([0.0, 30.0, 30.0, 90.0])
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(clock))
    budget = loop.Budget(minutes=2.0)
    budget.start()
    budget.stop()  # 30 s
    assert budget.fraction() == pytest.approx(0.25) and not budget.spent
    budget.start()
    budget.stop()  # 60 s more
    assert budget.spent_s == pytest.approx(90.0) and not budget.spent
    config = loop.TrainConfig(max_steps=10**8, max_minutes=2.0, optim=loop.OptimConfig(warmup_steps=1, min_lr_ratio=0))
    assert loop._schedule(5, config, budget) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.75)))
    with pytest.raises(ConfigError, match="max_minutes must be above 0"):
        loop.TrainConfig(max_minutes=0)


def test_a_data_config_refuses_unknown_keys_and_kinds():
    with pytest.raises(ConfigError, match="unknown key"):
        DatasetConfig(train=[{"kind": "coco_instances", "json": "a", "images": "b", "colour": 1}])
    with pytest.raises(ConfigError, match="kind 'yolo'"):
        DatasetConfig(train=[{"kind": "yolo", "json": "a", "images": "b"}])
    with pytest.raises(ConfigError, match="lists no source"):
        DatasetConfig(train=[])


def test_finetune_writes_a_model_folder_with_its_scores_before_and_after(coco_set, micro_model, tmp_path, capsys):
    start = micro_model.save_pretrained(tmp_path / "start")
    out = tmp_path / "tuned"
    data = []
    for split in ("train", "val"):
        data += [f"--{split}-json", str(instances_path(coco_set, split))]
        data += [f"--{split}-images", str(image_dir(coco_set, split))]
    args = ["finetune", "--model", str(start), *data, "--steps", "2", "--batch-size", "2", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "zero-shot: detect/AP" in printed and "final: detect/AP" in printed
    report = json.loads((out / "finetune.json").read_text())
    assert report["train"]["mix"]["tasks"] == {"detection": 1.0, "instance_segmentation": 0.5}
    assert report["train_images"] == 6 and "detect/AP50" in report["final"]
    tuned = load_pretrained(out)
    assert type(tuned) is type(micro_model)
    log = [json.loads(line) for line in (out / "training" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [2]
    assert main(args) == 2  # the folder is taken now
    assert "is not empty" in capsys.readouterr().err


def test_finetune_without_a_budget_or_with_unknown_files_says_what_to_give(coco_set, tmp_path, capsys):
    base = ["finetune", "--model", "checkpoints/visionllm-v1-tiny", "--out", str(tmp_path / "o")]
    assert main([*base, "--train-json", "x.json", "--train-images", "."]) == 2
    assert "give a budget" in capsys.readouterr().err
    assert main([*base, "--steps", "1", "--train-json", str(tmp_path / "none.json"), "--train-images", "."]) == 2
    assert "none.json: no such annotation file" in capsys.readouterr().err
    assert main([*base, "--steps", "1"]) == 2
    assert "--train-json" in capsys.readouterr().err


def test_a_memory_plan_counts_a_paper_preset_without_building_it():
    from visionllm.models.memory import memory_plan, weight_sources
    from visionllm.train.loop import load_run_config

    config, train = load_run_config(Path(__file__).resolve().parents[2] / "configs" / "paper.yaml")
    plan = memory_plan(config, train.frozen_groups)
    assert 6.7e9 < plan.total < 7.0e9 and plan.trainable < 0.05 * plan.total  # LoRA: the 7B base stays frozen
    one, eight = plan.training(1, zero=3, bf16_weights=True), plan.training(8, zero=3, bf16_weights=True)
    assert eight == pytest.approx(one / 8)  # ZeRO-3 shares everything it counts
    assert plan.training(8, zero=2, bf16_weights=True) > eight
    assert plan.inference(bf16=True) == 2 * plan.total
    assert "ZeRO-3" in plan.table(8) and "decoder" in plan.table(8)
    assert ("llm", "initialised (random)") in weight_sources(config)
    config.llm.pretrained = "/models/llama-7b"
    assert ("llm", "loaded from /models/llama-7b") in weight_sources(config)


def test_a_v2_model_finetunes_on_the_same_files(coco_set, micro_v2_model, tmp_path):
    from visionllm.train.finetune import finetune

    start = micro_v2_model.save_pretrained(tmp_path / "v2")
    data = DatasetConfig([sources(coco_set)])
    report = finetune(start, data, tmp_path / "tuned", steps=1, batch_size=2)
    assert report["train"]["freeze"] == ["vision", "generation_decoder", "editing_decoder", "patch_labels"]
    assert set(report["train"]["mix"]["tasks"]) == {"detection", "instance_segmentation"}
    assert type(load_pretrained(tmp_path / "tuned")) is type(micro_v2_model)


def test_an_interrupted_finetune_resumes_in_its_folder(coco_set, micro_model, tmp_path, monkeypatch):
    import os
    import signal

    from visionllm.train.finetune import finetune
    from visionllm.train.loop import TrainingInterrupted

    start = micro_model.save_pretrained(tmp_path / "start")
    data = DatasetConfig([sources(coco_set)], [sources(coco_set, "val")])
    stop = loop.Budget.stop

    def interrupting(budget):  # a SIGTERM arrives during the first step
        stop(budget)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.Budget, "stop", interrupting)
    settings = {"steps": 3, "batch_size": 2, "eval_images": 2}
    with pytest.raises(TrainingInterrupted) as stopped:
        finetune(start, data, tmp_path / "tuned", **settings)
    assert stopped.value.step == 1
    monkeypatch.setattr(loop.Budget, "stop", stop)
    with pytest.raises(FileExistsError, match="--resume"):
        finetune(start, data, tmp_path / "tuned", **settings)
    report = finetune(start, data, tmp_path / "tuned", resume=True, **settings)
    log = [json.loads(line) for line in (tmp_path / "tuned" / "training" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "interrupted" in r] == [1] and [r["step"] for r in log if "loss" in r] == [3]
    assert "zero_shot" in report and "final" in report
    assert load_pretrained(tmp_path / "tuned")


def test_a_data_config_names_the_sources(coco_set, micro_model, tmp_path, capsys):
    import yaml

    start = micro_model.save_pretrained(tmp_path / "start")
    broken, _, _ = _broken_copy(coco_set, tmp_path)
    config = {"train": [{"kind": "coco_instances", "json": str(broken), "images": str(image_dir(coco_set, "train"))}]}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(config))
    base = ["finetune", "--model", str(start), "--data", str(tmp_path / "data.yaml"), "--steps", "1"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2  # the malformed annotations stop it, named
    assert "broken.json: annotation" in capsys.readouterr().err
    assert main([*base, "--skip-bad", "--batch-size", "2", "--out", str(tmp_path / "b")]) == 0
    assert "left out 2 malformed annotation(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "finetune.json").read_text())["skipped_annotations"] == 2
