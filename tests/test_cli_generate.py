"""`visionllm generate` and `visionllm edit` write the pictures a v2 model's image decoders make, and `chat` saves the
images a reply makes; every user mistake ends in one clear line, never a traceback."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionllm.cli import main
from visionllm.formats.results import GeneratedImage
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.model import VisionLLMv2

SHIPPED_V1 = Path(__file__).resolve().parents[1] / "checkpoints" / "visionllm-v1-tiny"


@pytest.fixture(scope="module")
def checkpoint(micro_v2_model, tmp_path_factory) -> Path:
    return micro_v2_model.save_pretrained(tmp_path_factory.mktemp("model") / "micro-v2")


@pytest.fixture
def no_decoders(micro_v2, tmp_path) -> Path:
    """A v2 model without generation and editing decoders."""
    del micro_v2["generation"], micro_v2["editing"]
    micro_v2["link"]["routes"] = [r for r in micro_v2["link"]["routes"] if r not in ("[GEN]", "[EDIT]")]
    return VisionLLMv2(VisionLLMv2Config.from_dict(micro_v2)).save_pretrained(tmp_path / "no-decoders")


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("visionllm: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_generate_writes_a_picture_of_the_decoders_size_and_says_where(checkpoint, micro_v2_model, tmp_path, capsys):
    out = tmp_path / "red.png"
    assert main(["generate", "--model", str(checkpoint), "--prompt", "a red circle", "--out", str(out)]) == 0
    side = micro_v2_model.generation_decoder.config.image_size
    assert Image.open(out).size == (side, side)
    assert capsys.readouterr().out == f"{out} ({side}x{side}, seed 0): a red circle\n"


def test_the_same_seed_gives_the_same_picture_and_another_seed_another(checkpoint, tmp_path):
    base = ["generate", "--model", str(checkpoint), "--prompt", "a blue square", "--steps", "2"]
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert main([*base, "--seed", seed, "--out", str(tmp_path / f"{name}.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert not np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "c.png"))


def test_several_prompts_are_numbered_and_equal_each_prompt_alone(checkpoint, tmp_path, capsys):
    prompts = ["a red circle", "a green star above a yellow hexagon"]
    argv = ["generate", "--model", str(checkpoint), "--out", str(tmp_path / "x.png")]
    assert main([*argv, "--prompt", prompts[0], "--prompt", prompts[1]]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == [str(tmp_path / "x_0.png"), str(tmp_path / "x_1.png")]
    assert not (tmp_path / "x.png").exists()
    for k, prompt in enumerate(prompts):
        alone = tmp_path / f"alone_{k}.png"
        assert main(["generate", "--model", str(checkpoint), "--prompt", prompt, "--out", str(alone)]) == 0
        assert np.array_equal(pixels(tmp_path / f"x_{k}.png"), pixels(alone)), prompt


def test_edit_keeps_the_input_s_size(checkpoint, image, tmp_path, capsys):
    out = tmp_path / "edited.png"
    argv = ["edit", "--model", str(checkpoint), "--image", str(image), "--out", str(out)]
    assert main([*argv, "--instruction", "make the circle green", "--image-guidance", "1.2"]) == 0
    assert Image.open(out).size == Image.open(image).size == (60, 40)
    assert capsys.readouterr().out == f"{out} (60x40, seed 0): make the circle green\n"
    assert main([*argv, "--instruction", "make it red", "--instruction", "remove the star"]) == 0
    assert [Image.open(tmp_path / f"edited_{k}.png").size for k in range(2)] == [(60, 40), (60, 40)]


@pytest.mark.parametrize("command", ["generate", "edit"])
def test_a_model_without_the_decoder_is_refused_by_name(command, no_decoders, image, tmp_path, capsys):
    task = {"generate": "generation", "edit": "editing"}[command]
    for model, version in ((no_decoders, 2), (SHIPPED_V1, 1)):
        argv = [command, "--model", str(model), "--out", str(tmp_path / "o.png")]
        argv += ["--prompt", "a red circle"] if command == "generate" else ["--image", str(image), "--instruction", "x"]
        assert main(argv) == 2
        err = one_line_error(capsys)
        assert f"is a v{version} model and does not answer {task}; it answers: detection," in err, err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--out", "{tmp}/missing/o.png"], "the folder {tmp}/missing does not exist"),
        (["--out", "{tmp}"], "is a folder: give a file name"),
        (["--out", "{tmp}/o.xyz"], "unknown picture format '.xyz'"),
        (["--out", "{tmp}/o.png", "--steps", "0"], "--steps: must be >= 1"),
        (["--out", "{tmp}/o.png", "--guidance", "nan"], "--guidance: must be a number"),
        (["--out", "{tmp}/o.png", "--seed", "-1"], "--seed: must be between 0 and"),
        (["--out", "{tmp}/o.png", "--prompt", " "], "--prompt is empty"),
    ],
)
def test_generate_refuses_bad_arguments_in_one_line(checkpoint, tmp_path, capsys, extra, words):
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    argv = ["generate", "--model", str(checkpoint), *(["--prompt", "a red circle"] if "--prompt" not in extra else [])]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert words.replace("{tmp}", str(tmp_path)) in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_generate_refuses_steps_its_schedule_cannot_take(checkpoint, tmp_path, capsys):
    argv = ["generate", "--model", str(checkpoint), "--prompt", "a red circle", "--out", str(tmp_path / "o.png")]
    assert main([*argv, "--steps", "100000"]) == 2  # more than the noise schedule's training steps
    assert "--steps 100000 is more than the decoder's noise schedule has (1000 timesteps)" in one_line_error(capsys)


def test_edit_refuses_a_missing_or_unreadable_image_in_one_line(checkpoint, tmp_path, capsys):
    argv = ["edit", "--model", str(checkpoint), "--instruction", "make it red", "--out", str(tmp_path / "o.png")]
    assert main([*argv, "--image", str(tmp_path / "gone.png")]) == 2
    assert "--image" in one_line_error(capsys) and not (tmp_path / "o.png").exists()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    assert main([*argv, "--image", str(broken)]) == 2
    assert "is not an image PIL can read" in one_line_error(capsys)
    assert main([*argv, "--image", str(broken), "--image-guidance", "-1"]) == 2
    assert "--image-guidance: must be a number >= 0" in capsys.readouterr().err


def test_chat_without_an_image_answers(checkpoint, capsys):
    assert main(["chat", "--model", str(checkpoint), "--message", "Draw a red circle."]) == 0
    assert capsys.readouterr().out.strip()


def test_chat_saves_the_images_a_reply_makes_and_prints_their_paths(checkpoint, tmp_path, capsys, monkeypatch):
    chat = VisionLLMv2.chat

    def drawing_chat(self, image, turns, *args, **kwargs):  # a random model seldom writes [GEN]: make it draw twice
        reply = chat(self, image, turns, *args, **kwargs)
        reply.images = [GeneratedImage(np.full((16, 16, 3), k, np.uint8), "a red circle", 0) for k in (10, 20)]
        return reply

    monkeypatch.setattr(VisionLLMv2, "chat", drawing_chat)
    argv = ["chat", "--model", str(checkpoint), "--message", "Draw a red circle."]
    assert main([*argv, "--save-images", str(tmp_path / "drawn.png")]) == 0
    printed = capsys.readouterr().out.splitlines()[-2:]
    assert printed == [f"image {tmp_path / f'drawn_{k}.png'} (16x16): a red circle" for k in range(2)]
    assert [pixels(tmp_path / f"drawn_{k}.png")[0, 0, 0] for k in range(2)] == [10, 20]
    assert main(argv) == 0  # without --save-images they are named, not written
    assert "not saved: give --save-images PREFIX" in capsys.readouterr().out


def test_chat_refuses_what_needs_an_image_without_one(checkpoint, tmp_path, capsys):
    argv = ["chat", "--model", str(checkpoint), "--message", "What is region1 <region>?"]
    assert main([*argv, "--box", "1", "1", "5", "5"]) == 2
    assert "give --image too" in one_line_error(capsys)
    assert main([*argv, "--save-images", str(tmp_path / "missing" / "x")]) == 2
    assert "does not exist" in one_line_error(capsys)
