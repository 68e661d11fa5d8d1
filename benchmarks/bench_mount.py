"""Time to mount: ``artifactfs mount`` until the tree is listable and until a manifest
has been read, against the ways git users get a working copy.

Each round runs every contender once, in a rotated order, each in a fresh state
root / mountpoint / clone directory; the tables give medians over the rounds.
Run from the repository root::

    python -m benchmarks.bench_mount                      # both default corpora, 5 rounds
    python -m benchmarks.bench_mount --corpus 5000x150000 --rounds 3
    python -m benchmarks.bench_mount --repo /srv/mirrors/project.git
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

from artifactfs.hydrator.priority import PriorityClass, builtin_class
from artifactfs.testing import git
from artifactfs.testing.mounts import MountedTree, artifactfs_command
from benchmarks.common import (
    Corpus,
    Samples,
    argument_parser,
    banner,
    git_clone_seconds,
    goal_row,
    goals_table,
    ratio_text,
    rotated,
    run,
    samples_table,
    scratch,
    seconds_text,
    selected_corpora,
    served,
    table,
    timed,
)

MOUNT_LISTABLE = "artifactfs mount -> tree listable"
MOUNT_MANIFEST = "artifactfs mount -> manifest read"
CLI_FLOOR = "artifactfs --version (CLI start-up floor)"
CLONES: dict[str, tuple[str, ...]] = {
    "git clone": (),
    "git clone --no-checkout": ("--no-checkout",),
    "git clone --filter=blob:none --no-checkout": ("--filter=blob:none", "--no-checkout"),
    "git clone --depth 1": ("--depth", "1"),
}
BLOBLESS = "git clone --filter=blob:none --no-checkout"
LONG_HISTORY = 100_000
"""Commits from which the long-history goal applies."""


def first_manifest(repo: Path) -> str:
    """``package.json`` at the root if there is one, else the shallowest manifest of the tip."""
    paths = git(repo, "ls-tree", "-r", "--name-only", "HEAD").decode().splitlines()
    manifests = sorted(
        (path for path in paths if builtin_class(path) is PriorityClass.MANIFEST),
        key=lambda path: (path.count("/"), path != "package.json", path),
    )
    if not manifests:
        raise SystemExit(f"{repo} has no manifest file at its tip")
    return manifests[0]


def measure_mount(url: str, workdir: Path, manifest: str, samples: Samples) -> None:
    """One mount from a fresh state root: time to listable, then to one manifest read."""
    with scratch(workdir, "mount") as base:
        tree = MountedTree(url, base / "mnt", base / "state")
        started = time.perf_counter()
        try:
            tree.mount()
            if not os.listdir(tree.path):
                raise RuntimeError("the mounted tree is empty")
            samples.add(MOUNT_LISTABLE, time.perf_counter() - started)
            (tree.path / manifest).read_bytes()
            samples.add(MOUNT_MANIFEST, time.perf_counter() - started)
        finally:
            tree.unmount()


def measure_cli_floor(samples: Samples) -> None:
    """What any ``artifactfs`` command costs before doing anything: interpreter and imports."""
    samples.add(CLI_FLOOR, timed(lambda: run(artifactfs_command("--version"))))


def measure_clone(url: str, workdir: Path, name: str, samples: Samples) -> None:
    with scratch(workdir, "clone") as base:
        samples.add(name, git_clone_seconds(url, base / "clone", *CLONES[name]))


def bench(corpus: Corpus, rounds: int, workdir: Path) -> None:
    banner("Time to mount", corpus, rounds, workdir)
    manifest = first_manifest(corpus.path)
    commits = corpus.commit_count
    samples = Samples()
    with served(corpus) as url:
        contenders: dict[str, Callable[[], None]] = {
            "mount": functools.partial(measure_mount, url, workdir, manifest, samples),
            CLI_FLOOR: functools.partial(measure_cli_floor, samples),
        }
        for name in CLONES:
            contenders[name] = functools.partial(measure_clone, url, workdir, name, samples)
        for round_number in range(rounds):
            for name in rotated(list(contenders), round_number):
                contenders[name]()
            print(
                f"round {round_number + 1}/{rounds}: mount {seconds_text(samples.values[MOUNT_LISTABLE][-1])}, "
                f"blobless clone {seconds_text(samples.values[BLOBLESS][-1])}",
                flush=True,
            )
    print(f"\nmanifest read: {manifest}\n")
    print(samples_table(samples, [MOUNT_LISTABLE, MOUNT_MANIFEST, *CLONES, CLI_FLOOR]))
    mount = samples.median(MOUNT_LISTABLE)
    print()
    print(
        table(
            ["ratio (medians)", "value"],
            [[f"mount / {name}", ratio_text(mount, samples.median(name))] for name in CLONES]
            + [
                [
                    f"mount -> manifest / {BLOBLESS}",
                    ratio_text(samples.median(MOUNT_MANIFEST), samples.median(BLOBLESS)),
                ]
            ],
        )
    )
    blobless = samples.median(BLOBLESS)
    goals = [
        goal_row("mount < 0.5 s", seconds_text(mount), mount < 0.5),
        goal_row("mount <= 0.5x blobless clone", ratio_text(mount, blobless), mount <= 0.5 * blobless),
    ]
    if commits >= LONG_HISTORY:
        goals.append(
            goal_row(
                f"mount <= 0.15x blobless clone ({commits} commits)",
                ratio_text(mount, blobless),
                mount <= 0.15 * blobless,
            )
        )
    print()
    print(goals_table(goals))


def main() -> None:
    parser = argument_parser(__doc__ or "", ["5000x40000", "5000x150000"], rounds=5)
    arguments: argparse.Namespace = parser.parse_args()
    for corpus in selected_corpora(arguments):
        bench(corpus, arguments.rounds, arguments.workdir)


if __name__ == "__main__":
    main()
