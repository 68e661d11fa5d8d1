"""Model-based: random file operations on the mount and on a local directory agree.

One mount serves the whole run. Its repository holds many identical copies
(``t0`` .. ``tN``) of a small tree; every Hypothesis example takes a fresh copy
on the mount (so base files, copy-up and whiteouts are exercised) and a fresh
``shutil.copytree`` of a ``git clone`` of it on local disk, applies the same
operations to both and compares results: values, errno on failure, and the
whole tree after every step.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import robustness
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from artifactfs.testing import FileSpec, GitHttpServer, make_bare_repo
from artifactfs.testing.mounts import MountedTree

MAX_EXAMPLES = int(os.environ.get("ARTIFACTFS_MODEL_EXAMPLES", "60"))
STEPS = int(os.environ.get("ARTIFACTFS_MODEL_STEPS", "30"))
COPIES = MAX_EXAMPLES * 3 + 10  # Hypothesis may run more examples than max_examples while shrinking

TEMPLATE: dict[str, bytes | FileSpec] = {
    "a": b"alpha\n",
    "exe": FileSpec(b"#!/bin/sh\n", executable=True),
    "sub/a": b"sub alpha\n" * 100,
    "sub/link": FileSpec(symlink_target="../a"),
    "d/x": b"",
    "d/deeper/y": b"why\n",
}
NAMES = [
    "a",
    "b",
    "exe",
    "sub",
    "d",
    "sub/a",
    "sub/b",
    "sub/link",
    "d/x",
    "d/deeper",
    "d/deeper/y",
    "d/new",
    "sub/d",
    "nope/z",
]
paths = st.sampled_from(NAMES)


@dataclass
class Env:
    mount: Path
    local: Path
    counter: Iterator[int]


@pytest.fixture(scope="module")
def model_env(tmp_path_factory, fuse) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("model")
    served = base / "served"
    files = {f"t{n}/{name}": spec for n in range(COPIES) for name, spec in TEMPLATE.items()}
    make_bare_repo(served / "model.git", files)
    clone = base / "clone"
    subprocess.run(
        ["git", "clone", "-q", str(served / "model.git"), str(clone)], check=True, capture_output=True
    )
    local = base / "local"
    local.mkdir()
    with GitHttpServer(served) as server:
        with MountedTree(server.url("model"), base / "mnt", base / "state") as tree:
            env = Env(tree.path, local, itertools.count())
            env.clone = clone  # type: ignore[attr-defined]
            yield env


def outcome(function: Callable[[Path], Any], root: Path) -> tuple[str, Any]:
    try:
        return ("ok", function(root))
    except OSError as error:
        return ("error", errno.errorcode.get(error.errno or 0, error.errno))


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    result: dict[str, tuple[Any, ...]] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(directory, name)
            info = os.lstat(path)
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                result[key] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                result[key] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                result[key] = ("file", stat.S_IMODE(info.st_mode), info.st_size, path.read_bytes())
    return result


class FileSystemModel(RuleBasedStateMachine):
    env: Env

    def __init__(self) -> None:
        super().__init__()
        number = next(self.env.counter)
        assert number < COPIES, "ran out of fresh copies; raise COPIES"
        self.mount = self.env.mount / f"t{number}"
        self.local = self.env.local / f"t{number}"
        shutil.copytree(self.env.clone / f"t{number}", self.local, symlinks=True)  # type: ignore[attr-defined]
        self.steps = 0

    def both(self, function: Callable[[Path], Any]) -> tuple[str, Any]:
        expected = outcome(function, self.local)
        actual = outcome(function, self.mount)
        assert actual == expected, f"mount {actual} != local {expected}"
        self.steps += 1
        robustness.add("model_steps")
        return actual

    @rule(path=paths, data=st.binary(max_size=300))
    def create(self, path: str, data: bytes) -> None:
        def run(root: Path) -> int:
            fd = os.open(root / path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        self.both(run)

    @rule(path=paths, offset=st.integers(0, 400), data=st.binary(min_size=1, max_size=100))
    def write_at(self, path: str, offset: int, data: bytes) -> None:
        def run(root: Path) -> int:
            fd = os.open(root / path, os.O_WRONLY)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        self.both(run)

    @rule(path=paths, data=st.binary(min_size=1, max_size=100))
    def append(self, path: str, data: bytes) -> None:
        def run(root: Path) -> int:
            fd = os.open(root / path, os.O_WRONLY | os.O_APPEND)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        self.both(run)

    @rule(path=paths, size=st.integers(0, 2000))
    def truncate(self, path: str, size: int) -> None:
        self.both(lambda root: os.truncate(root / path, size))

    @rule(source=paths, destination=paths)
    def rename(self, source: str, destination: str) -> None:
        self.both(lambda root: os.rename(root / source, root / destination))

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.both(lambda root: os.unlink(root / path))

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        self.both(lambda root: os.mkdir(root / path, 0o755))

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.both(lambda root: os.rmdir(root / path))

    @rule(path=paths, mode=st.sampled_from([0o600, 0o644, 0o700, 0o755]))
    def chmod(self, path: str, mode: int) -> None:
        self.both(lambda root: os.chmod(root / path, mode))

    @rule(path=paths, link_to=st.sampled_from(["a", "../a", "sub/a", "/etc/hostname", "missing", "d"]))
    def symlink(self, path: str, link_to: str) -> None:
        self.both(lambda root: os.symlink(link_to, root / path))

    @rule(path=paths)
    def read(self, path: str) -> None:
        self.both(lambda root: (root / path).read_bytes())

    @rule(path=paths)
    def readlink(self, path: str) -> None:
        self.both(lambda root: os.readlink(root / path))

    @rule(path=paths)
    def listdir(self, path: str) -> None:
        self.both(lambda root: sorted(os.listdir(root / path)))

    @rule(path=paths)
    def stat_entry(self, path: str) -> None:
        def run(root: Path) -> tuple[int, int | None]:
            info = os.lstat(root / path)
            size = None if stat.S_ISDIR(info.st_mode) else info.st_size
            return info.st_mode, size

        self.both(run)

    @invariant()
    def trees_agree(self) -> None:
        assert snapshot(self.mount) == snapshot(self.local)


def test_mount_behaves_like_a_local_directory(model_env: Env) -> None:
    FileSystemModel.env = model_env
    runner = FileSystemModel.TestCase
    runner.settings = settings(
        max_examples=MAX_EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    runner().runTest()
