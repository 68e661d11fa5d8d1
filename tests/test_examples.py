"""The container examples, run for real (without Docker): the entrypoint mounts, runs a
command in the tree and always unmounts; the agent reads, commits and pushes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from artifactfs.testing import GitHttpServer, git
from artifactfs.testing.mounts import force_unmount, is_mounted, run_cli
from artifactfs.testing.waiting import wait_until

MakeRepo = Callable[..., tuple[Path, str]]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = {
    "package.json": b'{"name": "webapp", "version": "2.1.0", "dependencies": {"left-pad": "1.3.0"}}\n',
    "pyproject.toml": b'[project]\nname = "tooling"\ndependencies = ["click", "httpx"]\n',
    "src/index.js": b"console.log('hi')\n",
    "assets/big.bin": bytes(range(256)) * 2048,
}


@pytest.fixture
def environment(tmp_path: Path, fuse: None) -> dict[str, str]:
    """What the container would set: the state root, the mountpoint, and artifactfs on PATH."""
    scripts = Path(sys.executable).parent
    assert (scripts / "artifactfs").exists(), (
        "the artifactfs console script is not installed (pip install -e .)"
    )
    return {
        **os.environ,
        "PATH": f"{scripts}{os.pathsep}{os.environ['PATH']}",
        "ARTIFACTFS_ROOT": str(tmp_path / "state"),
        "ARTIFACTFS_MOUNTPOINT": str(tmp_path / "workspace"),
    }


@pytest.fixture
def served(make_repo: MakeRepo, git_server: GitHttpServer) -> tuple[Path, str]:
    path, _ = make_repo("webapp", FILES)
    return path, git_server.url("webapp")


def no_mounts_left(environment: dict[str, str]) -> bool:
    mountpoint = Path(environment["ARTIFACTFS_MOUNTPOINT"])
    listing = run_cli("list", root=Path(environment["ARTIFACTFS_ROOT"])).stdout.strip()
    return not is_mounted(mountpoint) and listing == "no mounts"


def test_entrypoint_runs_the_command_inside_the_tree_and_unmounts_on_failure(
    served: tuple[Path, str], environment: dict[str, str]
) -> None:
    _, url = served
    script = "cat package.json; test -f assets/big.bin && git rev-parse --abbrev-ref HEAD; exit 7"
    result = subprocess.run(
        ["sh", str(EXAMPLES / "entrypoint.sh"), "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, "ARTIFACTFS_REMOTE": url},
        check=False,
    )
    assert result.returncode == 7, result.stderr
    assert result.stdout == FILES["package.json"].decode() + "main\n"
    assert no_mounts_left(environment)


def test_entrypoint_passes_sigterm_on_and_unmounts(
    served: tuple[Path, str], environment: dict[str, str]
) -> None:
    _, url = served
    mountpoint = Path(environment["ARTIFACTFS_MOUNTPOINT"])
    process = subprocess.Popen(
        ["sh", str(EXAMPLES / "entrypoint.sh"), "sleep", "60"],
        env={**environment, "ARTIFACTFS_REMOTE": url},
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: is_mounted(mountpoint) and _sleeping_in(mountpoint),
            "the entrypoint did not mount",
            timeout=30,
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        force_unmount(mountpoint)
    assert no_mounts_left(environment)


def _sleeping_in(mountpoint: Path) -> bool:
    """Whether the entrypoint's command (sleep) has started with the mount as its working directory."""
    for proc in Path("/proc").iterdir():
        try:
            if (proc / "comm").read_text().strip() == "sleep" and os.readlink(proc / "cwd") == str(
                mountpoint
            ):
                return True
        except OSError:
            continue
    return False


def test_entrypoint_refuses_to_run_without_a_remote(environment: dict[str, str]) -> None:
    result = subprocess.run(
        ["sh", str(EXAMPLES / "entrypoint.sh"), "true"],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment,
        check=False,
    )
    assert result.returncode != 0 and "ARTIFACTFS_REMOTE" in result.stderr


def test_agent_commits_and_pushes_a_manifest_summary(
    served: tuple[Path, str], environment: dict[str, str]
) -> None:
    repository, url = served
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent.py"), "--remote", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    pushed = git(repository, "show", "main:MANIFESTS.md").decode()
    assert pushed == (
        "# Manifests\n\n- `package.json`: webapp 2.1.0, 1 dependencies\n"
        "- `pyproject.toml`: tooling, 2 dependencies\n"
    )
    assert (
        git(repository, "log", "-1", "--format=%s%n%an", "main").decode()
        == "Summarise the dependency manifests\nArtifactFS agent\n"
    )
    assert git(repository, "rev-parse", "main").decode().split()[0] in result.stdout
    assert git(repository, "show", "main:assets/big.bin") == FILES["assets/big.bin"], "the push lost a file"
    assert no_mounts_left(environment)
