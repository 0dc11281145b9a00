"""Run ``python -m sdxl_server`` for real, on a loopback port, as a user would."""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A server process whose log lines can be awaited (no polling of the server itself)."""

    def __init__(self, tiny_cache: Path, output_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output_dir = output_dir
        environ = {
            **os.environ,
            "MODEL_ID": "tiny", "TINY_CACHE": str(tiny_cache), "OUTPUT_DIR": str(output_dir),
            "HOST": "127.0.0.1", "PORT": str(self.port), "TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "DEFAULT_WIDTH": "64", "DEFAULT_HEIGHT": "64", "DEFAULT_STEPS": "2", "LOG_LEVEL": "info",
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sdxl_server"], env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1,
        )
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_log(self, *patterns: str, timeout: float = 120) -> None:
        """Block until each pattern has matched a log line (in any order); fail if the process ends first."""
        missing = set(patterns)
        deadline = time.monotonic() + timeout
        while missing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no log line matched {sorted(missing)}:\n{''.join(self.log[-30:])}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"the server exited before logging {sorted(missing)}:\n{''.join(self.log[-30:])}")
            self.log.append(line)
            missing = {p for p in missing if not re.search(p, line)}

    def wait_ready(self) -> LiveServer:
        self.wait_for_log(r"model ready in", r"Running on http://127\.0\.0\.1")
        return self

    def exit_code(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout=timeout)
        while (line := self._lines.get()) is not None:  # the rest of the log
            self.log.append(line)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()
