import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from visionllm.cli import main

from .conftest import SHIPPED_MODEL


def test_serve_refuses_bad_arguments_with_exit_2(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["serve", "--model", str(SHIPPED_MODEL), "--image-dir", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["serve", "--model", str(SHIPPED_MODEL), "--max-batch-size", "0"]) == 2


@pytest.mark.slow
def test_visionllm_serve_runs_and_answers(image_url):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "visionllm.cli", "serve", "--model", str(SHIPPED_MODEL), "--port", str(port)]
    env = {**os.environ, "VISIONLLM_API_KEY": "k"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "visionllm serve did not come up"
            time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models").status_code == 401  # the key from the environment is required
        reply = httpx.post(
            f"{url}/v1/predict",
            json={"image": image_url, "task": "caption"},
            headers={"Authorization": "Bearer k"},
            timeout=60,
        )
        assert reply.status_code == 200 and reply.json()["model"] == "visionllm-v1-tiny"
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"serving visionllm-v1-tiny at http://127.0.0.1:{port}/" in output
