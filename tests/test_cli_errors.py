"""Every user mistake the CLI can meet ends in one clear line on stderr and exit status 2, never a traceback."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionllm.cli import main

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "visionllm-v1-tiny"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "in.png"
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(path)
    return path


def damaged_copy(tmp_path: Path, damage) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, folder)
    damage(folder)
    return folder


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def set_config(folder: Path, section: str, key: str, value) -> None:
    config = json.loads((folder / "config.json").read_text())
    config[section][key] = value
    (folder / "config.json").write_text(json.dumps(config))


DAMAGE = {
    "truncated weights": (lambda f: truncate(f / "model.safetensors"), ["model.safetensors", "damaged"]),
    "garbage weights": (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64), ["model.safetensors"]),
    "truncated config": (lambda f: truncate(f / "config.json"), ["config.json", "not valid JSON"]),
    "config not an object": (lambda f: (f / "config.json").write_text("[1, 2]"), ["config.json", "JSON object"]),
    "wrong-typed config": (lambda f: set_config(f, "llm", "hidden_size", "64"), ["llm.hidden_size", "integer"]),
    "unknown config key": (lambda f: set_config(f, "llm", "hiden_size", 64), ["hiden_size", "unknown key"]),
    "impossible config": (lambda f: set_config(f, "llm", "num_heads", 7), ["config.json", "cannot be built"]),
    "corrupt tokenizer": (lambda f: truncate(f / "tokenizer" / "tokenizer.json"), ["tokenizer", "damaged"]),
    "weights of another shape": (lambda f: set_config(f, "llm", "intermediate_size", 100), ["does not match"]),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, image, capsys, name):
    damage, words = DAMAGE[name]
    folder = damaged_copy(tmp_path, damage)
    assert main(["predict", "--model", str(folder), "--image", str(image), "--task", "caption"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("visionllm: error:"), err
    for word in words:
        assert word in err, err


def coco(tmp_path: Path, content) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(content))
    return path


GOOD_IMAGE = {"id": 1, "file_name": "in.png", "width": 60, "height": 40}
CATEGORY = {"id": 1, "name": "circle"}
BAD_COCO = {
    "a list": ([1, 2], "should be an object"),
    "no categories": ({"images": [GOOD_IMAGE], "annotations": []}, "missing `categories`"),
    "empty categories": ({"images": [GOOD_IMAGE], "annotations": [], "categories": []}, "no categories"),
    "bad bbox": (
        {
            "images": [GOOD_IMAGE],
            "categories": [{"id": 1, "name": "circle"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, "x"]}],
        },
        "`bbox` should be",
    ),
    "missing image file": (
        {"images": [{**GOOD_IMAGE, "file_name": "gone.png"}], "annotations": [], "categories": [CATEGORY]},
        "not in",
    ),
}


@pytest.mark.parametrize("name", list(BAD_COCO))
def test_malformed_coco_files_are_refused_by_name(tmp_path, image, capsys, name):
    content, words = BAD_COCO[name]
    path = coco(tmp_path, content)
    code = main(["eval", "--model", str(SHIPPED_MODEL), "--coco-json", str(path), "--images", str(image.parent)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["eval", "--model", "M", "--shapesworld", "D", "--limit", "-1"], "--limit: must be >= 1"),
        (["eval", "--model", "M", "--shapesworld", "D", "--limit", "ten"], "--limit: expected a whole number"),
        (["serve", "--port", "99999"], "--port: must be between 1 and 65535"),
        (["demo", "--web", "--port", "0"], "--port: must be between 1 and 65535"),
        (["predict", "--model", "M", "--image", "I", "--min-score", "nan"], "--min-score: must be a number"),
        (["predict", "--model", "M", "--image", "I", "--min-score", "1.5"], "--min-score: must be a number"),
        (["train", "--config", "C", "--max-steps", "0"], "--max-steps: must be >= 1"),
        (["serve", "--max-wait-ms", "inf"], "--max-wait-ms: must be a number"),
        (["serve", "--max-prompt-tokens", "0"], "--max-prompt-tokens: must be >= 1"),
        (["data", "shapes", "--out", "D", "--size", "9"], "--size: must be between 64 and 512"),
    ],
)
def test_bad_numbers_are_refused_by_the_argument_parser(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err


def test_output_paths_are_checked_before_any_work(tmp_path, image, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    argv = ["predict", "--model", str(tmp_path / "no-model"), "--image", str(image)]
    assert main([*argv, "--save-vis", str(folder)]) == 2  # refused before the (missing) model is even loaded
    assert "is a folder: give a file name" in capsys.readouterr().err
    assert main([*argv, "--save-vis", str(tmp_path / "out.xyz")]) == 2
    assert "unknown picture format" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--shapesworld", "D", "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_an_instruction_binding_too_many_classes_is_one_line(image, capsys):
    classes = ",".join(f"class {i}" for i in range(70))  # the shipped model has 64 class tokens
    argv = ["predict", "--model", str(SHIPPED_MODEL), "--image", str(image), "--classes", classes]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "64" in err, err
    free = 'Detect {"a": <c69>} in <image>.'
    assert main(["predict", "--model", str(SHIPPED_MODEL), "--image", str(image), "--instruction", free]) == 2
    assert "<c0>..<c63>" in capsys.readouterr().err


def test_bad_yaml_and_bad_values_in_a_preset_are_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  llm: {hidden_size: 64\ntrain:\n  max_steps: 10\n")
    assert main(["train", "--config", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.yaml is not valid YAML" in err, err
    typed = tmp_path / "typed.yaml"
    typed.write_text("train:\n  optim: {lr: fast}\n")
    assert main(["train", "--config", str(typed)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.optim.lr must be a number" in err, err


def test_a_port_in_use_is_refused_before_the_model_loads(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(SHIPPED_MODEL), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err, err


def test_tasks_the_model_does_not_answer_are_refused_by_name(image, capsys):
    argv = ["predict", "--model", str(SHIPPED_MODEL), "--image", str(image), "--task", "editing"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "v1 model and does not answer editing; it answers: detection," in err and err.count("\n") == 1, err
    assert main(["eval", "--model", str(SHIPPED_MODEL), "--shapesworld", str(image.parent), "--tasks", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown task(s) ['bogus']" in err and err.count("\n") == 1, err


def test_chat_with_a_v1_model_points_to_predict(image, capsys):
    assert main(["chat", "--model", str(SHIPPED_MODEL), "--image", str(image), "--message", "hello"]) == 2
    err = capsys.readouterr().err
    assert "is a v1 model, which answers one instruction: use visionllm predict" in err and err.count("\n") == 1
