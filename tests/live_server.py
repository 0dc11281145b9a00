"""Run ``python -m sdxl_server`` for real, on a loopback port, as a user would.

The one helper for every test that needs a server in a subprocess (shutdown, schemathesis, the
browser). The environment is the caller's without any server setting (so a ``MODEL_ID`` or
``PORT`` exported in the shell never leaks in), then the tiny-model defaults, then the test's own
settings. Readiness is awaited from the server's log lines, read by a thread as they are written
(no polling of the server itself); the whole log stays available in :attr:`LiveServer.log`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(settings: dict[str, str]) -> dict[str, str]:
    """The current environment without any server setting, then ``settings``."""
    from sdxl_server.config import settings_fields

    ours = {f.metadata["env"] for f in settings_fields()}
    env = {name: value for name, value in os.environ.items() if name not in ours}
    return {**env, **settings, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


class LiveServer:
    """A server process, started at construction; its log lines can be awaited.

    Construct several, then :meth:`wait_ready` each, to start them side by side.
    """

    def __init__(self, tiny_cache: Path, output_dir: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output_dir = output_dir
        env = server_env({
            "MODEL_ID": "tiny", "TINY_CACHE": str(tiny_cache), "OUTPUT_DIR": str(output_dir),
            "HOST": "127.0.0.1", "PORT": str(self.port), "TORCH_THREADS": "1",
            "DEFAULT_WIDTH": "64", "DEFAULT_HEIGHT": "64", "DEFAULT_STEPS": "2", "LOG_LEVEL": "info",
            **settings,
        })
        self.log: list[str] = []  # every line so far, appended by the reader thread
        self._seen = 0  # how many of them wait_for_log has looked at
        self._ended = False  # the reader reached the end of the output
        self._ready = False
        self._signalled = False
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sdxl_server"], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.log.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def log_text(self) -> str:
        with self._changed:
            return "".join(self.log)

    def log_tail(self, lines: int = 40) -> str:
        with self._changed:
            return "".join(self.log[-lines:])

    def wait_for_log(self, *patterns: str, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until each pattern has matched a line not looked at by an earlier call (in any order).

        Fail with the log's tail if the process ends first or the time runs out.
        """
        missing = set(patterns)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.log[self._seen:]:
                    self._seen += 1
                    missing = {p for p in missing if not re.search(p, line)}
                    if not missing:
                        return
                if self._ended:
                    raise RuntimeError(
                        f"the server exited ({self._code()}) before logging {sorted(missing)}:\n{self.log_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no log line matched {sorted(missing)} in {timeout:.0f} s:\n{self.log_tail()}")
                self._changed.wait(remaining)

    def _code(self) -> int | str:
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return "still running, its output closed"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> LiveServer:
        """Wait for the model to be loaded and the port to be listening (once; later calls return at once)."""
        if not self._ready:
            self.wait_for_log(r"model ready in", r"Running on http://127\.0\.0\.1", timeout=timeout)
            self._ready = True
        return self

    def exit_code(self, timeout: float = READY_TIMEOUT_S) -> int:
        """Wait for the process to end and for the rest of its log."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 60
    ) -> tuple[int, Any]:
        """One HTTP request with an optional JSON body; the status and the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read() or b"null")

    def get_json(self, path: str, timeout: float = 60, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return self.request("GET", path, headers=headers, timeout=timeout)

    def terminate(self) -> None:
        """SIGTERM, a graceful shutdown; sent once only (a second signal would interrupt it)."""
        if not self._signalled and self.process.poll() is None:
            self._signalled = True
            self.process.terminate()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait, SIGKILL if it takes longer than ``timeout``; then close the log pipe."""
        self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()


def stop_all(servers: Iterable[LiveServer]) -> None:
    """Ask every server to stop at once, then wait for each."""
    servers = list(servers)
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()
