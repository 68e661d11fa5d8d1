"""A real OpenSSH server for tests and benchmarks: ``sshd`` on 127.0.0.1.

It owns everything the server and its clients need, all under one directory:
the sshd config (``UsePAM no``, ``StrictModes no``, keys only), a host key, a
fresh client key in ``authorized_keys``, a ``known_hosts`` that trusts the
host key, and an ssh client config naming the server ``artifactfs-test``.
Nothing of the system's ssh setup is read or changed, except that sshd
needs its privilege-separation directory ``/run/sshd`` to exist. The
server runs as the current user (root in the test suite), so repository
paths are plain absolute paths.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

HOST_ALIAS = "artifactfs-test"
_START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SshServer:
    """``sshd`` on a free port of 127.0.0.1 with key authentication only.

    ``accept_protocol_env=False`` leaves ``GIT_PROTOCOL`` out of ``AcceptEnv``,
    as on servers that only pass the variable when asked in the command.
    Clients use :attr:`ssh_command` (for ``GIT_SSH_COMMAND``): ``ssh -F`` with
    the generated client config, the client key and the ``known_hosts`` file.
    ``key_in_config=False`` leaves the key out of the client config, for a
    client that gets it from ``ssh-agent``.
    """

    def __init__(
        self, directory: Path, *, accept_protocol_env: bool = True, key_in_config: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.accept_protocol_env = accept_protocol_env
        self.key_in_config = key_in_config
        self.port = 0
        self.client_key = self.directory / "client_key"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def client_config(self) -> Path:
        return self.directory / "ssh_config"

    @property
    def ssh_command(self) -> str:
        return f"ssh -F {shlex.quote(str(self.client_config))}"

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    def url(self, path: Path) -> str:
        """``ssh://`` URL of the repository at ``path`` (an absolute path on this machine)."""
        return f"ssh://root@127.0.0.1:{self.port}{path}"

    def scp_url(self, path: Path) -> str:
        """scp-like form of the same, through the client config's host alias."""
        return f"{HOST_ALIAS}:{path}"

    def start(self) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists():
            raise RuntimeError("sshd is missing: install openssh-server (scripts/install)")
        self.directory.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        host_key = self.directory / "host_key"
        for key in (host_key, self.client_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)],
                check=True,
                capture_output=True,
            )
        (self.directory / "authorized_keys").write_bytes(self.client_key.with_suffix(".pub").read_bytes())
        host_public = host_key.with_suffix(".pub").read_text().split()
        (self.directory / "known_hosts").write_text(f"{HOST_ALIAS} {host_public[0]} {host_public[1]}\n")
        self.port = _free_port()
        config = self.directory / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
                    f"PidFile {self.directory / 'sshd.pid'}",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PrintMotd no",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "LogLevel VERBOSE",
                    *(["AcceptEnv GIT_PROTOCOL"] if self.accept_protocol_env else []),
                    "",
                ]
            )
        )
        self.client_config.write_text(
            "\n".join(
                [
                    f"Host {HOST_ALIAS}",
                    "  HostName 127.0.0.1",
                    f"  Port {self.port}",
                    "Host *",
                    "  User root",
                    f"  HostKeyAlias {HOST_ALIAS}",
                    *(
                        [f"  IdentityFile {self.client_key}", "  IdentitiesOnly yes"]
                        if self.key_in_config
                        else []
                    ),
                    f"  UserKnownHostsFile {self.directory / 'known_hosts'}",
                    "  GlobalKnownHostsFile /dev/null",
                    "  StrictHostKeyChecking yes",
                    "  LogLevel ERROR",
                    "",
                ]
            )
        )
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT
            )
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"sshd exited at start: {self.log_path.read_text().strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                    if probe.recv(4) == b"SSH-":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start listening on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
