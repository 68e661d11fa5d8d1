"""32 workers at once on one mount: readers, writers and ``git status`` loops.

``ARTIFACTFS_STRESS_SECONDS`` (default 60, a minute) is how long they run;
shorten it for quick local iterations.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import robustness

from artifactfs.testing.mounts import MountedTree

pytestmark = pytest.mark.slow

STRESS_SECONDS = float(os.environ.get("ARTIFACTFS_STRESS_SECONDS", "60"))
READERS, WRITERS, STATUS_LOOPS = 12, 14, 6
assert READERS + WRITERS + STATUS_LOOPS == 32


def stress_files() -> dict[str, bytes]:
    rng = random.Random(21)
    files = {
        f"src/m{i % 6}/f{i}.py": (f"# module {i}\n" + "x = 1\n" * rng.randint(1, 4000)).encode()
        for i in range(60)
    }
    files.update({f"assets/a{i}.bin": rng.randbytes(rng.randint(1, 300) << 10) for i in range(12)})
    files.update({f"owned/w{k}.txt": f"owned by writer {k}\n".encode() for k in range(WRITERS)})
    return files


class Writer:
    """Creates, modifies, renames and deletes files in its own directory, and edits one tracked file."""

    def __init__(self, root: Path, index: int, seed: int) -> None:
        self.root = root
        self.index = index
        self.rng = random.Random(seed)
        self.directory = f"w{index}"
        self.files: dict[str, bytes] = {}
        self.owned = f"owned/w{index}.txt"
        self.owned_content = f"owned by writer {index}\n".encode()
        self.operations = 0

    def step(self) -> None:
        rng = self.rng
        choice = rng.random()
        names = sorted(self.files)
        if choice < 0.3 or not names:
            name = f"{self.directory}/n{self.operations}.txt"
            data = rng.randbytes(rng.randint(0, 20000))
            (self.root / name).write_bytes(data)
            self.files[name] = data
        elif choice < 0.5:
            name = rng.choice(names)
            extra = rng.randbytes(rng.randint(1, 500))
            with open(self.root / name, "r+b") as stream:
                offset = rng.randint(0, len(self.files[name]))
                stream.seek(offset)
                stream.write(extra)
            old = self.files[name]
            self.files[name] = old[:offset] + extra + old[offset + len(extra) :]
        elif choice < 0.65:
            name = rng.choice(names)
            target = f"{self.directory}/r{self.operations}.txt"
            os.rename(self.root / name, self.root / target)
            self.files[target] = self.files.pop(name)
        elif choice < 0.75:
            name = rng.choice(names)
            os.unlink(self.root / name)
            del self.files[name]
        elif choice < 0.85:
            self.owned_content += b"line %d\n" % self.operations
            with open(self.root / self.owned, "ab") as stream:
                stream.write(b"line %d\n" % self.operations)
        else:
            name = rng.choice(names)
            assert (self.root / name).read_bytes() == self.files[name], f"writer {self.index}: {name} differs"
            robustness.add("reads_verified")
        self.operations += 1


def test_32_workers_no_deadlock_no_eio_contents_match(make_repo, git_server, mounts):
    files = stress_files()
    make_repo("stress", files)
    tree: MountedTree = mounts(git_server.url("stress"))
    tree.git("config", "core.untrackedCache", "false")
    for index in range(WRITERS):
        (tree.path / f"w{index}").mkdir()
    deadline = time.monotonic() + STRESS_SECONDS
    failures: list[str] = []
    counts = {"reads": 0, "writes": 0, "status": 0}
    lock = threading.Lock()
    writers = [Writer(tree.path, index, 1000 + index) for index in range(WRITERS)]
    readonly = sorted(name for name in files if not name.startswith("owned/"))

    def guarded(function: Callable[..., None]) -> Callable[..., None]:
        def run(*arguments: object) -> None:
            try:
                function(*arguments)
            except BaseException as error:  # any error is a failure, not a silent thread death
                with lock:
                    failures.append(f"{function.__name__}{arguments}: {error!r}")

        return run

    @guarded
    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            name = rng.choice(readonly)
            data = (tree.path / name).read_bytes()
            assert data == files[name], f"{name}: wrong content"
            with lock:
                counts["reads"] += 1
            robustness.add("reads_verified")

    @guarded
    def writer(index: int) -> None:
        while time.monotonic() < deadline:
            writers[index].step()
            with lock:
                counts["writes"] += 1

    @guarded
    def status_loop(seed: int) -> None:
        while time.monotonic() < deadline:
            result = subprocess.run(
                ["git", "status", "--porcelain"], cwd=tree.path, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, result.stderr
            for line in result.stdout.splitlines():
                path = line[3:]
                assert path.startswith(("w", "owned/")), f"status reports an untouched path: {line}"
            with lock:
                counts["status"] += 1

    threads = (
        [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
        + [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        + [threading.Thread(target=status_loop, args=(n,)) for n in range(STATUS_LOOPS)]
    )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(deadline - time.monotonic(), 0) + 90)
    hung = [thread.name for thread in threads if thread.is_alive()]
    assert not hung, f"deadlock: {len(hung)} workers did not finish"
    assert not failures, failures[:5]
    print(f"stress: {counts} in {STRESS_SECONDS:g}s with 32 workers")
    assert counts["reads"] > 100 and counts["writes"] > 100 and counts["status"] >= STATUS_LOOPS

    # Afterwards git agrees with the writers' final state, and every file has exactly its content.
    expected = set()
    for state in writers:
        for name, data in state.files.items():
            assert (tree.path / name).read_bytes() == data
            expected.add(f"?? {name}")
        assert sorted(os.listdir(tree.path / state.directory)) == sorted(Path(n).name for n in state.files)
        assert (tree.path / state.owned).read_bytes() == state.owned_content
        if state.owned_content != files[state.owned]:
            expected.add(f" M {state.owned}")
    result = tree.git("status", "--porcelain", "--untracked-files=all")
    assert set(result.stdout.splitlines()) == expected
    for name in readonly:
        assert (tree.path / name).read_bytes() == files[name]
    assert tree.status()["hydration"]["failed_blobs"] == 0
