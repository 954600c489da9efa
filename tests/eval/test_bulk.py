"""Bulk inference: one results file over a folder or a COCO file, the same on 2 processes as on 1, and a killed run
started again finishes with the file an uninterrupted run writes."""

import json
import os
import subprocess
import sys

import pytest

from visionllm.cli import main
from visionllm.data.shapes.coco_set import image_dir, instances_path, write_coco_set
from visionllm.data.shapes.scene import ShapesWorldConfig
from visionllm.eval.bulk import bulk_predict, coco_images, folder_images, parts_dir
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("bulk") / "set"
    config = ShapesWorldConfig(image_size=64, shapes=("cross", "arrow"), person_probability=0.0, max_objects=3)
    write_coco_set(root, 0, 7, config, seed=5, progress=False)
    return root


@pytest.fixture(scope="module")
def saved_model(micro_model, tmp_path_factory):
    return micro_model.save_pretrained(tmp_path_factory.mktemp("bulk_model") / "m")


def _predict(saved_model, coco_set, out, launch=()):
    command = [*launch, "-m", "visionllm.cli", "predict", "--model", str(saved_model), "--input",
               str(instances_path(coco_set, "val")), "--images", str(image_dir(coco_set, "val")), "--out", str(out),
               "--batch-size", "2", "--min-score", "0.0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads per process: the same float sums
    done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_processes_write_the_results_file_one_writes(saved_model, coco_set, tmp_path):
    printed = _predict(saved_model, coco_set, tmp_path / "one.json")
    assert "results of 7 images" in printed
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571"]
    printed = _predict(saved_model, coco_set, tmp_path / "two.json", launch)
    assert printed.count("results of 7 images") == 1  # the main process merges and reports
    one = json.loads((tmp_path / "one.json").read_text())
    ids = {im["id"] for im in json.loads(instances_path(coco_set, "val").read_text())["images"]}
    assert one and {e["image_id"] for e in one} <= ids
    assert (tmp_path / "two.json").read_text() == (tmp_path / "one.json").read_text()
    assert not parts_dir(tmp_path / "two.json").exists()


class _Killed(Exception):
    pass


class _DiesAfter:
    """A model that stops the run (as a kill would) when asked for its `calls`-th batch."""

    def __init__(self, model, calls):
        self.model, self.calls = model, calls

    def predict(self, *args, **kwargs):
        self.calls -= 1
        if self.calls < 0:
            raise _Killed
        return self.model.predict(*args, **kwargs)


def test_a_killed_run_started_again_ends_with_the_uninterrupted_file(micro_model, coco_set, tmp_path):
    images, ids = coco_images(instances_path(coco_set, "val"), image_dir(coco_set, "val"))
    instruction = build_instruction(Task.DETECTION, classes=list(ids), config=micro_model.config.codec())
    whole = bulk_predict(micro_model, images, instruction, ids, tmp_path / "whole.json", 2, 0.0, progress=False)
    out = tmp_path / "again.json"
    with pytest.raises(_Killed):
        bulk_predict(_DiesAfter(micro_model, 2), images, instruction, ids, out, 2, 0.0, progress=False)
    written = [json.loads(line) for part in parts_dir(out).glob("*.jsonl") for line in part.read_text().splitlines()]
    assert len(written) == 4 and not out.exists()  # two batches of two were kept
    counting = _DiesAfter(micro_model, 100)
    bulk_predict(counting, images, instruction, ids, out, 2, 0.0, progress=False)
    assert counting.calls == 100 - 2  # only the 3 images left, in 2 batches
    assert out.read_text() == whole.read_text()


def test_a_folder_needs_classes_and_numbers_its_images_by_name(saved_model, coco_set, tmp_path, capsys):
    folder = image_dir(coco_set, "val")
    found = folder_images(folder)
    assert [im.image_id for im in found] == list(range(1, 8))
    assert [im.file_name for im in found] == sorted(p.name for p in folder.iterdir())
    base = ["predict", "--model", str(saved_model), "--input", str(folder), "--out", str(tmp_path / "r.json")]
    assert main(base) == 2
    assert "needs --classes" in capsys.readouterr().err
    assert main([*base, "--classes", "cross,arrow", "--min-score", "0"]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert all(e["file_name"] == found[e["image_id"] - 1].file_name for e in results)
    assert {e["category_id"] for e in results} <= {1, 2}


def test_bulk_flags_are_checked_before_any_work(saved_model, coco_set, tmp_path, capsys):
    model = ["predict", "--model", str(saved_model)]
    assert main(model) == 2
    assert "give --image FILE" in capsys.readouterr().err
    assert main([*model, "--input", str(instances_path(coco_set, "val")), "--out", str(tmp_path / "r.json")]) == 2
    assert "needs --images" in capsys.readouterr().err
    assert main([*model, "--input", str(image_dir(coco_set, "val")), "--task", "vqa", "--out", "x.json"]) == 2
    assert "answers --task detection" in capsys.readouterr().err
