"""Start `edgecnn serve` as a child process and wait until it is ready; stop it with SIGTERM.

One way to do it for the tests, `tools/loadtest.py`, `tools/soak.py` and `tools/bench_startup.py`
(and for scripts that run a server beside them). Loopback only.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

from edgecnn.errors import EdgecnnError


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServeProcess:
    """A running `edgecnn serve MODEL --port PORT [options]` child."""

    model: Path
    options: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    stdout: Optional[IO] = None  # where its output goes (default: discarded)
    stderr: Optional[IO] = None
    proc: subprocess.Popen = field(init=False)
    ready_seconds: float = field(init=False, default=0.0)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "ServeProcess":
        """Start it and wait until /v2/health/ready answers 200; an EdgecnnError if it exits or
        is not ready within `timeout` seconds (then it is stopped)."""
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "edgecnn.cli", "serve", str(self.model), "--port", str(self.port), *self.options]
        self.proc = subprocess.Popen(
            cmd, stdout=self.stdout or subprocess.DEVNULL, stderr=self.stderr or subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                said = (
                    self.proc.stderr.read().decode(errors="replace")[-2000:] if self.stderr == subprocess.PIPE else ""
                )
                raise EdgecnnError(
                    f"edgecnn serve exited with {self.proc.returncode} before it was ready{': ' + said if said else ''}"
                )
            try:
                with urllib.request.urlopen(self.base + "/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        self.ready_seconds = time.perf_counter() - started
                        return self
            except OSError:  # refused, reset, 503 while starting
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EdgecnnError(f"edgecnn serve was not ready within {timeout:g} s")
            time.sleep(0.01)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` seconds; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
