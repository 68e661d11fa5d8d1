"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from artifactfs.testing import FileSpec, GitHttpServer, make_bare_repo
from artifactfs.testing.mounts import MountedTree

# ---------------------------------------------------------------------------
# Remote fixtures (owned by the artifactfs.remote / artifactfs.testing work):
# served bare repositories and a real `git http-backend` server over them.
# ---------------------------------------------------------------------------

MakeRepo = Callable[..., tuple[Path, str]]

DEFAULT_FILES: dict[str, bytes | FileSpec] = {
    "README.md": b"# demo\n",
    "src/main.py": b"print('hello')\n",
    "src/util.py": b"def helper() -> int:\n    return 42\n",
    "bin/run.sh": FileSpec(b"#!/bin/sh\necho run\n", executable=True),
    "docs/link": FileSpec(symlink_target="../README.md"),
}


@pytest.fixture
def git_root(tmp_path: Path) -> Path:
    """Directory whose bare repositories ``git_server`` serves."""
    root = tmp_path / "served"
    root.mkdir()
    return root


@pytest.fixture
def make_repo(git_root: Path) -> MakeRepo:
    """Factory: ``make_repo(name="repo", files=DEFAULT_FILES, **make_bare_repo_kwargs)``
    builds ``<git_root>/<name>.git`` and returns ``(path, tip_commit_oid)``."""

    def factory(
        name: str = "repo", files: Mapping[str, bytes | FileSpec] | None = None, **kwargs: Any
    ) -> tuple[Path, str]:
        path = git_root / f"{name}.git"
        return path, make_bare_repo(path, DEFAULT_FILES if files is None else files, **kwargs)

    return factory


@pytest.fixture
def git_server(git_root: Path) -> Iterator[GitHttpServer]:
    """A started :class:`GitHttpServer` over ``git_root`` (object-info on, no auth)."""
    with GitHttpServer(git_root) as server:
        yield server


# ---------------------------------------------------------------------------
# End of remote fixtures.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Mount fixtures: real FUSE is required. A machine without it fails loudly
# here instead of silently skipping the end-to-end tests.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fuse() -> None:
    """Assert that real FUSE mounts can be made on this machine."""
    import shutil

    assert Path("/dev/fuse").exists(), (
        "/dev/fuse is missing: end-to-end tests need FUSE (run scripts/install as root)"
    )
    assert shutil.which("fusermount3"), "fusermount3 is missing: run scripts/install"


@pytest.fixture(scope="session", autouse=True)
def mount_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This session's registry of running mounts: ``list`` in tests sees no mount of another session."""
    import os

    path = tmp_path_factory.mktemp("registry")
    previous = os.environ.get("ARTIFACTFS_RUNTIME_DIR")
    os.environ["ARTIFACTFS_RUNTIME_DIR"] = str(path)
    yield path
    if previous is None:
        del os.environ["ARTIFACTFS_RUNTIME_DIR"]
    else:
        os.environ["ARTIFACTFS_RUNTIME_DIR"] = previous


@pytest.fixture
def state_root(tmp_path: Path) -> Path:
    """The ArtifactFS state root used by this test's mounts."""
    return tmp_path / "state"


@pytest.fixture
def mounts(tmp_path: Path, state_root: Path, fuse: None) -> Iterator[Callable[..., MountedTree]]:
    """Factory ``mounts(remote, *mount_arguments, name="mnt")`` for real mounts, unmounted at teardown."""
    created: list[MountedTree] = []

    def factory(remote: str, *arguments: str, name: str = "mnt") -> MountedTree:
        tree = MountedTree(remote, tmp_path / name, state_root, arguments)
        created.append(tree)
        return tree.mount()

    yield factory
    for tree in created:
        tree.unmount()


# ---------------------------------------------------------------------------
# Robustness summary (tests/robustness.py counters, filled by test_faults,
# test_crash, test_hostile, test_stress and test_model): one line at the end.
# ---------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tier every test: ``fuse`` when it (or a fixture it uses) needs the ``fuse`` fixture; ``unit``
    when it needs no mount and is not marked ``slow``, so ``pytest -m unit`` stays quick."""
    for item in items:
        if "fuse" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fuse)
        elif item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.unit)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    import robustness

    line = robustness.summary()
    if line:
        terminalreporter.write_sep("-", "robustness")
        terminalreporter.write_line(line)


# ---------------------------------------------------------------------------
# End of robustness summary.
# ---------------------------------------------------------------------------
