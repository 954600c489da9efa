"""The package's layering: only `models/` knows model versions; everything else goes through the loading table."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "visionllm"


def test_no_package_outside_models_imports_a_model_version():
    version = re.compile(r"^\s*(from|import)\s+visionllm\.models\.v\d", re.M)
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "models" not in path.relative_to(SRC).parts[:1] and version.search(path.read_text())
    ]
    assert offenders == []
    assert version.search((SRC / "models" / "loading.py").read_text())  # the one place that names the versions
