"""bench/gpu_check.py at toy sizes: the steps a GPU machine runs (a tiny preset trains, a paper preset's layout
answers in batches) work on any device."""

import importlib.util
import json
from pathlib import Path


def test_the_gpu_check_runs_its_steps_at_toy_sizes(capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--minutes", "0.2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    kinds = {(r.get("kind"), r.get("batch")) for r in rows}
    assert ("train", None) in kinds and ("predict", 1) in kinds and ("predict", 2) in kinds
    assert all(r["images_per_s"] > 0 for r in rows if "images_per_s" in r)
