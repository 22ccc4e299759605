"""The demo app (`python -m hf_ddpm.demo`) started for the tests as a user starts it: a real Gradio server in
its own process, on a free loopback port, with the environment it is given."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DemoServer:
    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_demo(
    log_dir: Path,
    args: list[str],
    env: dict[str, str | None] | None = None,
    command: list[str] | None = None,
    cwd: Path = REPO,
) -> DemoServer:
    """Starts the app and returns once it answers HTTP; fails with the app's output if it exits first.

    `command` replaces `python -m hf_ddpm.demo` (a Space's `python app.py`); it must take `--port`.
    """
    port = free_port()
    log = log_dir / f"demo-{port}.log"
    # A value of None removes that variable.
    merged = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    environment = {key: value for key, value in merged.items() if value is not None}
    command = command or [sys.executable, "-m", "hf_ddpm.demo"]
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port), *args],
            cwd=cwd,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = DemoServer(f"http://127.0.0.1:{port}/", process, log)
    while True:  # no clock: the app either answers or exits
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited with {process.returncode}:\n{server.output()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url, timeout=5) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
