import json

import numpy as np
import pytest
from PIL import Image

from visionllm.cli import main


@pytest.fixture(scope="module")
def checkpoint(micro_model, tmp_path_factory):
    return micro_model.save_pretrained(tmp_path_factory.mktemp("model") / "micro")


def test_predict_prints_json_and_draws(checkpoint, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(image)
    out = tmp_path / "vis.png"
    code = main(
        [
            "predict",
            "--model",
            str(checkpoint),
            "--image",
            str(image),
            "--classes",
            "circle,star",
            "--min-score",
            "0",
            "--save-vis",
            str(out),
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert '{"circle": <c0>, "star": <c1>}' in payload["instruction"]
    assert isinstance(payload["result"], list | dict)
    assert Image.open(out).size[0] >= 60
    assert main(["predict", "--model", str(checkpoint), "--image", str(image), "--task", "caption"]) == 0
    assert "text" in json.loads(capsys.readouterr().out)["result"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model", "--image", "IMAGE"], "not a VisionLLM checkpoint"),
        (["--image", "/no/such.png"], "not found"),
        (["--image", "IMAGE", "--task", "grounding"], "needs an expression"),
        (["--image", "IMAGE", "--classes", ",".join(f"c{i}" for i in range(20))], "can be bound"),
    ],
)
def test_predict_reports_bad_input(checkpoint, tmp_path, capsys, args, message):
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    args = [str(image) if a == "IMAGE" else a for a in args]
    if "--model" not in args:
        args = ["--model", str(checkpoint), *args]
    assert main(["predict", *args]) == 2
    assert message in capsys.readouterr().err


def test_eval_on_a_coco_file_and_on_shapesworld(checkpoint, tiny_shapesworld, tmp_path, capsys):
    world = tiny_shapesworld
    out = tmp_path / "m.json"
    code = main(
        [
            "eval",
            "--model",
            str(checkpoint),
            "--coco-json",
            str(world.instances("val")),
            "--images",
            str(world.image_dir("val")),
            "--task",
            "detect",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"AP", "AP50", "AP75"} <= set(metrics) and 0 <= metrics["AP"] <= 1
    assert json.loads(out.read_text()) == metrics
    code = main(
        [
            "eval",
            "--model",
            str(checkpoint),
            "--shapesworld",
            str(world.root),
            "--tasks",
            "detection,grounding,vqa",
            "--limit",
            "2",
        ]
    )
    assert code == 0
    assert {"box_AP", "grounding_P@0.5", "vqa_accuracy"} <= set(json.loads(capsys.readouterr().out))
    assert main(["eval", "--model", str(checkpoint)]) == 2
    assert "--coco-json" in capsys.readouterr().err


def test_eval_on_shapesworld_reports_controls_unless_told_not_to(checkpoint, tiny_shapesworld, capsys):
    # --limit 3: the first six questions, on two images (five questions per image).
    args = ["eval", "--model", str(checkpoint), "--shapesworld", str(tiny_shapesworld.root), "--tasks", "vqa"]
    assert main([*args, "--limit", "3"]) == 0
    reported = json.loads(capsys.readouterr().out)
    assert {k for k in reported if "[" not in k} == {"vqa_accuracy", "vqa_accuracy_blind", "vqa_prior"}
    assert {k.split("[")[0] for k in reported} == {"vqa_accuracy", "vqa_accuracy_blind", "vqa_prior"}  # by type
    assert main([*args, "--limit", "3", "--no-controls"]) == 0
    assert {k.split("[")[0] for k in json.loads(capsys.readouterr().out)} == {"vqa_accuracy"}
