"""Everyday git commands in a fully hydrated mount against a native clone on local disk.

Both trees are checkouts of the same commit. After a warm-up run in each,
``git status`` is timed clean; then each round modifies the same 10 files in
both trees and times ``git status``, ``git diff``, ``git add -A`` and
``git commit``, interleaved (the side that goes first alternates). Run from
the repository root::

    python -m benchmarks.bench_git_status                 # 5000x40000 corpus, 5 rounds
    python -m benchmarks.bench_git_status --rounds 10 --repo /srv/mirrors/project.git
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from artifactfs.hydrator.priority import PriorityClass, builtin_class
from artifactfs.testing import git, git_env
from artifactfs.testing.mounts import MountedTree
from benchmarks.common import (
    IDENTITY_ENV,
    Corpus,
    Samples,
    argument_parser,
    banner,
    goal_row,
    goals_table,
    ratio_text,
    rotated,
    run,
    scratch,
    seconds_text,
    selected_corpora,
    served,
    table,
    timed,
    tip_blob_count,
)

MODIFIED_FILES = 10
HYDRATION_TIMEOUT = 900.0
CYCLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("git status (10 files modified)", ("status",)),
    ("git diff", ("diff",)),
    ("git add -A", ("add", "-A")),
    ("git commit -m x", ("commit", "--quiet", "-m", "x")),
)
CLEAN = "git status (clean)"
SIDES = ("artifactfs", "native")


def files_to_modify(repo: Path) -> list[str]:
    """``MODIFIED_FILES`` source files spread over the tip."""
    sources = [
        path
        for path in git(repo, "ls-tree", "-r", "--name-only", "HEAD").decode().splitlines()
        if builtin_class(path) is PriorityClass.SOURCE
    ]
    step = max(1, len(sources) // MODIFIED_FILES)
    return sources[::step][:MODIFIED_FILES]


def modify(tree: Path, paths: Sequence[str], round_number: int) -> None:
    for path in paths:
        with open(tree / path, "a") as stream:
            stream.write(f"\n// benchmark edit {round_number}\n")


def git_seconds(tree: Path, arguments: Sequence[str]) -> float:
    environment = {**git_env(), **IDENTITY_ENV}
    return timed(lambda: run(["git", *arguments], cwd=tree, env=environment))


def bench(corpus: Corpus, rounds: int, workdir: Path) -> None:
    banner("git in the mount vs a native clone", corpus, rounds, workdir)
    expected = tip_blob_count(corpus.path)
    paths = files_to_modify(corpus.path)
    samples = {side: Samples() for side in SIDES}
    with served(corpus) as url, scratch(workdir, "git-status") as base:
        run(["git", "clone", "--quiet", url, str(base / "native")], env=git_env())
        mount = MountedTree(url, base / "mnt", base / "state")
        try:
            mount.mount()
            mount.wait_for(
                lambda status: (
                    status["hydration"]["complete"]
                    and status["history_complete"]
                    and status["hydration"]["total_blobs"] >= expected
                ),
                timeout=HYDRATION_TIMEOUT,
            )
            trees = {"artifactfs": mount.path, "native": base / "native"}
            for side in SIDES:
                git_seconds(trees[side], ["status"])
            for round_number in range(rounds):
                for side in rotated(SIDES, round_number):
                    samples[side].add(CLEAN, git_seconds(trees[side], ["status"]))
            for round_number in range(rounds):
                for side in rotated(SIDES, round_number):
                    modify(trees[side], paths, round_number)
                    for name, arguments in CYCLE:
                        samples[side].add(name, git_seconds(trees[side], arguments))
                print(
                    f"round {round_number + 1}/{rounds}: status (modified) "
                    f"{seconds_text(samples['artifactfs'].values[CYCLE[0][0]][-1])} vs "
                    f"{seconds_text(samples['native'].values[CYCLE[0][0]][-1])} native",
                    flush=True,
                )
        finally:
            mount.unmount()
    names = [CLEAN, *(name for name, _ in CYCLE)]
    print()
    print(
        table(
            ["command (median)", "artifactfs", "native", "ratio"],
            [
                [
                    name,
                    seconds_text(samples["artifactfs"].median(name)),
                    seconds_text(samples["native"].median(name)),
                    ratio_text(samples["artifactfs"].median(name), samples["native"].median(name)),
                ]
                for name in names
            ],
        )
    )
    print()
    print(
        goals_table(
            [
                goal_row(
                    f"{name} <= 1.5x native",
                    ratio_text(samples["artifactfs"].median(name), samples["native"].median(name)),
                    samples["artifactfs"].median(name) <= 1.5 * samples["native"].median(name),
                )
                for name in (CLEAN, CYCLE[0][0])
            ]
        )
    )


def main() -> None:
    parser = argument_parser(__doc__ or "", ["5000x40000"], rounds=5)
    arguments: argparse.Namespace = parser.parse_args()
    for corpus in selected_corpora(arguments):
        bench(corpus, arguments.rounds, arguments.workdir)


if __name__ == "__main__":
    main()
