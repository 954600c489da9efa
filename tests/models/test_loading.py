"""`visionllm.load_pretrained` loads any checkpoint folder by the `model_type` its config.json declares."""

import json

import numpy as np
import pytest

import visionllm
from visionllm.models.common.checkpoint import CheckpointError
from visionllm.models.loading import MODEL_CLASSES
from visionllm.models.v1.model import VisionLLM


@pytest.fixture(scope="module")
def checkpoint(micro_model, tmp_path_factory):
    return micro_model.save_pretrained(tmp_path_factory.mktemp("model") / "micro")


def test_a_v1_checkpoint_loads_as_v1_with_the_same_answers(checkpoint, micro_model):
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "visionllm-v1"
    model = visionllm.load_pretrained(checkpoint)
    assert type(model) is VisionLLM is MODEL_CLASSES["visionllm-v1"]
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    ours = model.predict([image], ["Describe <image>."])[0].prediction.text
    assert ours == micro_model.predict([image], ["Describe <image>."])[0].prediction.text


def test_an_unknown_model_type_or_folder_is_refused_by_name(checkpoint, tmp_path):
    config = json.loads((checkpoint / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "visionllm-v9"}))
    with pytest.raises(CheckpointError, match="model_type 'visionllm-v9' is not one this version"):
        visionllm.load_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no such folder"):
        visionllm.load_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="JSON object"):
        visionllm.load_pretrained(tmp_path)
