"""Tree-wide tools on a fully hydrated mount, beside a clone of the same commit.

Agents search whole trees: ``grep -r``, ``rg``, ``find``, ``git add -A``.
Once every blob is local these should cost what they cost on a disk. The
benchmark serves a copy of a real repository (prepared like
``bench_agent``: branches and tags only, missing blobs replaced by a
placeholder, repacked), clones it, mounts it, waits until every blob of the
tip is hydrated and then, each round, times in both trees:

- reading every tracked file twice (``git ls-files -z | xargs -0 cat``; the
  second pass is reported, the first only warms the caches);
- ``grep -r`` for a word (and ``rg`` if it is installed);
- ``find . -type f``;

(the clone's ``.git`` directory is left out of ``grep`` and ``find``: the
mount's gitdir lives outside it);
- ``git add -A`` on a clean tree;
- a warm ``git status``.

Medians and minimums over the rounds, the mount/clone ratios, and for the
mount the FUSE requests each step caused (from the daemon's counters) with
their mean handler time. Run from the repository root, as root::

    python -m benchmarks.bench_tree /work/.mirror/laravel+framework/repo --rounds 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifactfs.testing import GitHttpServer, git, git_env
from artifactfs.testing.mounts import MountedTree
from benchmarks.bench_agent import Prepared, prepare_copy, stop_mount, user_environment
from benchmarks.common import (
    goal_row,
    goals_table,
    mirror_argument_parser,
    ratio_text,
    run,
    scratch,
    seconds_text,
    table,
    timed,
    uptime_text,
    warm_page_cache,
)

CLONE = "clone"
MOUNT = "mount"
READ = "read every file (2nd pass)"
GREP = "grep -r"
RG = "rg"
FIND = "find . -type f"
ADD = "git add -A (clean)"
STATUS = "git status (warm)"

GOALS = {READ: 2.0, FIND: 8.0, ADD: 8.0}
HYDRATION_TIMEOUT = 600.0


@dataclass
class Results:
    """Seconds per (tree, step) over the rounds, and FUSE requests per step on the mount."""

    seconds: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    requests: dict[str, list[dict[str, tuple[int, float]]]] = field(default_factory=dict)

    def add(self, tree: str, step: str, seconds: float) -> None:
        self.seconds.setdefault((tree, step), []).append(seconds)

    def median(self, tree: str, step: str) -> float:
        return statistics.median(self.seconds[(tree, step)])

    def minimum(self, tree: str, step: str) -> float:
        return min(self.seconds[(tree, step)])

    def latest_ratio(self, step: str) -> float:
        return self.seconds[(MOUNT, step)][-1] / self.seconds[(CLONE, step)][-1]


def fuse_counters(mount: MountedTree) -> dict[str, tuple[int, float]]:
    """(requests, handler seconds) per FUSE operation, from the daemon's latency histograms."""
    latency: dict[str, Any] = mount.status()["fuse"]["latency"]
    return {name: (int(entry["count"]), float(entry["sum"])) for name, entry in latency.items()}


def counter_delta(
    before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]
) -> dict[str, tuple[int, float]]:
    delta = {}
    for name, (count, seconds) in after.items():
        old_count, old_seconds = before.get(name, (0, 0.0))
        if count > old_count:
            delta[name] = (count - old_count, seconds - old_seconds)
    return delta


def steps(tree: Path, word: str) -> list[tuple[str, Callable[[], object]]]:
    """The measured commands, in order, for one tree."""
    environment = user_environment()

    def read_all() -> None:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=tree, env=environment, check=True, capture_output=True
        ).stdout
        subprocess.run(["xargs", "-0", "cat"], cwd=tree, input=listing, check=True, stdout=subprocess.DEVNULL)

    def grep() -> None:
        # grep exits 1 when nothing matches; the word is chosen to match.
        subprocess.run(
            ["grep", "-r", "-l", "--exclude-dir=.git", word, "."],
            cwd=tree,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    measured: list[tuple[str, Callable[[], object]]] = [
        ("read every file (1st pass)", read_all),
        (READ, read_all),
        (GREP, grep),
    ]
    if shutil.which("rg"):
        measured.append(
            (RG, lambda: subprocess.run(["rg", "-l", word], cwd=tree, check=True, stdout=subprocess.DEVNULL))
        )
    measured += [
        (
            FIND,
            lambda: run(["find", ".", "-path", "./.git", "-prune", "-o", "-type", "f", "-print"], cwd=tree),
        ),
        (ADD, lambda: run(["git", "add", "-A"], cwd=tree, env=environment)),
        ("git status (first)", lambda: run(["git", "status", "--porcelain"], cwd=tree, env=environment)),
        (STATUS, lambda: run(["git", "status", "--porcelain"], cwd=tree, env=environment)),
    ]
    return measured


def wait_hydrated(mount: MountedTree) -> None:
    """Every blob of the tip is local (and the history fetch has ended, so nothing runs beside)."""
    mount.wait_for(
        lambda status: status["hydration"]["complete"] and status["history_complete"],
        timeout=HYDRATION_TIMEOUT,
        interval=0.5,
    )


def reused_copy(copy: Path | None) -> Prepared | None:
    """A copy an earlier run prepared and kept with ``--copy`` (preparing a large mirror takes minutes)."""
    if copy is None or not (copy / "objects").is_dir():
        return None
    return Prepared(copy, len(git(copy, "for-each-ref").splitlines()), 0, 0, 0.0)


def report(results: Results, names: Sequence[str], rounds: int) -> list[list[str]]:
    rows = []
    for name in names:
        clone, mounted = results.median(CLONE, name), results.median(MOUNT, name)
        clone_min, mounted_min = results.minimum(CLONE, name), results.minimum(MOUNT, name)
        rows.append(
            [
                name,
                seconds_text(clone),
                seconds_text(mounted),
                ratio_text(mounted, clone),
                seconds_text(clone_min),
                seconds_text(mounted_min),
                ratio_text(mounted_min, clone_min),
            ]
        )
    print(f"\n### Seconds over {rounds} rounds (median, then minimum)")
    print(
        table(
            ["step", "clone", "mount", "ratio", "clone min", "mount min", "ratio (min)"],
            rows,
        )
    )
    return rows


def report_requests(results: Results, names: Sequence[str]) -> None:
    """FUSE requests per step in the mount (median round) and the mean handler time of each."""
    rows = []
    for name in names:
        rounds = results.requests.get(name, [])
        operations = sorted({operation for counters in rounds for operation in counters})
        for operation in operations:
            counts = [counters.get(operation, (0, 0.0)) for counters in rounds]
            requests = statistics.median(count for count, _ in counts)
            total = sum(count for count, _ in counts)
            handler = sum(seconds for _, seconds in counts) / total if total else 0.0
            rows.append([name, operation, f"{requests:.0f}", f"{handler * 1e6:.0f} us"])
    print("\n### FUSE requests per step in the mount (median per round) and mean handler time")
    print(table(["step", "operation", "requests", "handler time"], rows or [["-", "-", "-", "-"]]))


def bench(source: Path, arguments: argparse.Namespace) -> None:
    workdir: Path = arguments.workdir
    print(f"load at start: {uptime_text()}")
    with scratch(workdir, "tree-corpus") as corpus_dir:
        prepared = reused_copy(arguments.copy) or prepare_copy(
            source, arguments.copy or corpus_dir / "repo.git"
        )
        files = len(git(prepared.path, "ls-tree", "-r", "-z", "--name-only", "HEAD").split(b"\0")) - 1
        directories = len(git(prepared.path, "ls-tree", "-r", "-d", "-z", "--name-only", "HEAD").split(b"\0"))
        print(f"\n## Tree-wide tools: {source}")
        print(
            f"{files} files, {directories} directories at the tip; prepared in {prepared.seconds:.1f} s; "
            f"{arguments.rounds} rounds; grep word {arguments.word!r}; rg "
            f"{'installed' if shutil.which('rg') else 'not installed (skipped)'}",
            flush=True,
        )
        warm_page_cache(prepared.path)
        (corpus_dir / "serve").mkdir()
        (corpus_dir / "serve" / "repo.git").symlink_to(prepared.path)
        results = Results()
        with GitHttpServer(corpus_dir / "serve") as server, scratch(workdir, "tree-run") as base:
            url = server.url("repo")
            clone = base / "clone"
            run(["git", "clone", "--quiet", url, str(clone)], env=git_env())
            mount = MountedTree(url, base / "mount", base / "state", env=_mount_environment())
            mount.mount()
            try:
                wait_hydrated(mount)
                print(f"mount hydrated: {uptime_text()}", flush=True)
                names: list[str] = []
                for round_number in range(arguments.rounds):
                    for tree_name, tree in ((CLONE, clone), (MOUNT, mount.path)):
                        for name, action in steps(tree, arguments.word):
                            before = fuse_counters(mount) if tree_name == MOUNT else {}
                            results.add(tree_name, name, timed(action))
                            if tree_name == MOUNT:
                                delta = counter_delta(before, fuse_counters(mount))
                                results.requests.setdefault(name, []).append(delta)
                            if name not in names:
                                names.append(name)
                    print(
                        f"round {round_number + 1}/{arguments.rounds}: "
                        + ", ".join(
                            f"{name} {results.latest_ratio(name):.1f}x" for name in (READ, FIND, ADD)
                        ),
                        flush=True,
                    )
            finally:
                stop_mount(mount)
    report(results, names, arguments.rounds)
    report_requests(results, names)
    goals = [
        goal_row(
            f"{name}: mount within {limit:g}x a clone",
            ratio_text(results.median(MOUNT, name), results.median(CLONE, name)),
            results.median(MOUNT, name) <= limit * results.median(CLONE, name),
        )
        for name, limit in GOALS.items()
    ]
    print()
    print(goals_table(goals))
    print(f"\nload at end: {uptime_text()}")


def _mount_environment() -> dict[str, str]:
    environment = user_environment()
    return {name: environment[name] for name in ("GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL")}


def main() -> None:
    parser = mirror_argument_parser(__doc__, rounds=3)
    parser.add_argument("--word", default="function", help="word to grep for (default 'function')")
    parser.add_argument(
        "--copy",
        type=Path,
        help="prepare the served copy here and keep it; reuse it if it exists (default: a scratch copy)",
    )
    arguments = parser.parse_args()
    bench(arguments.repo.resolve(), arguments)


if __name__ == "__main__":
    main()
