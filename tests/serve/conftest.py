from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionllm.models.v1.model import VisionLLM
from visionllm.serve.images import to_data_url

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "checkpoints" / "visionllm-v1-tiny"


@pytest.fixture(scope="session")
def shipped_model() -> VisionLLM:
    assert (SHIPPED_MODEL / "config.json").exists(), f"the shipped model is missing at {SHIPPED_MODEL}"
    return VisionLLM.from_pretrained(SHIPPED_MODEL)


def png_data_url(array: np.ndarray) -> str:
    return to_data_url(Image.fromarray(array))


@pytest.fixture
def image_url() -> str:
    rng = np.random.default_rng(0)
    return png_data_url(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def live_server():
    """Start an app under uvicorn on a free local port: `with live_server(app) as url: ...`."""
    import socket
    import threading
    import time
    from contextlib import contextmanager

    import uvicorn

    @contextmanager
    def run(app):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(30)

    return run


@pytest.fixture(scope="module")
def v2_client(micro_v2_model, calls):
    """A test client of the server over the micro v2 model; each module using it spies on the model's predict
    calls with a `calls` fixture of its own."""
    from fastapi.testclient import TestClient

    from visionllm.serve.app import ServerSettings, create_app

    with TestClient(create_app(micro_v2_model, ServerSettings(model_id="micro-v2", samples=1))) as test_client:
        yield test_client
