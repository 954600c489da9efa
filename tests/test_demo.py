"""The demo answers every task of the model's version on new ShapesWorld images and writes a picture of each."""

from visionllm.demo import run_demo


def test_the_v2_demo_shows_v2_s_tasks_beside_v1_s(micro_v2_model, tmp_path):
    folder = micro_v2_model.save_pretrained(tmp_path / "v2")
    table = run_demo(folder, tmp_path / "out", images=2, seed=3)
    shown = {line.split()[1] for line in table.splitlines()[2:] if line[:5].strip().isdigit()}
    assert {"detection", "segmentation", "keypoints", "caption", "interactive", "region", "semantic", "chat"} <= shown
    pictures = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert "demo_sheet.png" in pictures and "00_interactive_click.png" in pictures and "01_chat.png" in pictures


def test_the_v1_demo_keeps_to_v1_s_tasks(micro_model, tmp_path):
    folder = micro_model.save_pretrained(tmp_path / "v1")
    table = run_demo(folder, tmp_path / "out", images=1, seed=3)
    assert "caption" in table and "interactive" not in table and "chat" not in table
