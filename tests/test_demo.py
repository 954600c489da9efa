"""The demo answers every task of the model's version on new ShapesWorld images and writes a picture of each."""

from PIL import Image

from visionllm.demo import run_demo


def test_the_v2_demo_shows_v2_s_tasks_beside_v1_s(micro_v2_model, tmp_path):
    folder = micro_v2_model.save_pretrained(tmp_path / "v2")
    table = run_demo(folder, tmp_path / "out", images=2, seed=3)
    rows = [line.split() for line in table.splitlines()[2:] if line.strip()[:1].isdigit()]
    shown = {row[1] for row in rows}
    assert {"detection", "segmentation", "keypoints", "caption", "interactive", "region", "semantic", "chat"} <= shown
    pictures = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert "demo_sheet.png" in pictures and "00_interactive_click.png" in pictures and "01_chat.png" in pictures


def test_a_demo_model_with_image_decoders_also_generates_and_edits_a_drawing(micro_v2_model, tmp_path):
    folder = micro_v2_model.save_pretrained(tmp_path / "v2")
    table = run_demo(folder, tmp_path / "out", images=1, seed=3)
    drawn = {line.split()[1]: line for line in table.splitlines() if line.strip().startswith("d0 ")}
    side = micro_v2_model.generation_decoder.config.image_size
    size = micro_v2_model.config.image_size
    assert set(drawn) == {"generation", "editing"}
    assert f"a {side}x{side} image" in drawn["generation"]  # the generation decoder's size
    assert f"a {size}x{size} image" in drawn["editing"]  # an edit keeps its drawing's size
    out = tmp_path / "out"
    tiles = [Image.open(out / f"drawing_{name}.png") for name in ("source", "edited", "generated")]
    assert all(tile.width == size * 3 for tile in tiles)  # shown at the size of the other pictures
    sheet = Image.open(out / "demo_sheet.png")
    assert sheet.height > max(tile.height for tile in tiles) * 2  # the drawing's row below the image's tasks


def test_the_v1_demo_keeps_to_v1_s_tasks(micro_model, tmp_path):
    folder = micro_model.save_pretrained(tmp_path / "v1")
    table = run_demo(folder, tmp_path / "out", images=1, seed=3)
    assert "caption" in table and "interactive" not in table and "chat" not in table
    assert "generation" not in table and not list((tmp_path / "out").glob("drawing_*.png"))
