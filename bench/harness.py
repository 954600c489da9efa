"""What the reliability benchmarks share: a real `visionllm serve` process, its memory, and the report file.

docs/RELIABILITY.md holds one section per benchmark between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`;
each benchmark rewrites its own section and leaves the rest of the file as it is.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

REPORT = Path("docs/RELIABILITY.md")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}"


def update_section(name: str, text: str, path: Path = REPORT) -> None:
    """Replace the section `name` of the report (appended when the file has none yet)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{text.strip()}\n{end}"
    current = path.read_text() if path.exists() else "# Reliability\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(updated.rstrip() + "\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextmanager
def running_server(model: Path, extra: Sequence[str] = (), log: Path | None = None):
    """`visionllm serve` in a child process on a free local port; yields (process, base URL)."""
    port = free_port()
    command = [sys.executable, "-m", "visionllm.cli", "serve", "--model", str(model), "--port", str(port), *extra]
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode} before answering (see {log})")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 120 s")
            time.sleep(0.2)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        if log:
            output.close()


def hang_up(url: str, body: bytes, headers: dict[str, str] | None = None, half: bool = False) -> None:
    """POST `body` to /v1/predict (or only its first half) and close the connection without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    fields = {"Host": host, "Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
    head = "POST /v1/predict HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + (body[: len(body) // 2] if half else body))
        time.sleep(0.05)
