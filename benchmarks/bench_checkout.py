"""Branch switching in a mount beside a full clone, on a real repository.

Serves a copy of a bare mirror (prepared like ``bench_agent``: branches and
tags only, missing blobs replaced) over smart HTTP on 127.0.0.1. Each round
makes a full ``git clone`` and an ``artifactfs mount`` (waited on until its
history and the tip's blobs are local, as the clone's are), then times the
same git commands in both, between the mirror's HEAD and a distant commit:

    checkout --detach DISTANT, checkout HEAD-BRANCH (back), switch DISTANT-BRANCH,
    switch HEAD-BRANCH, reset --hard DISTANT, reset --hard HEAD-BRANCH

In the mount, after each command the benchmark waits (untimed, reported
separately) until the daemon has published the new HEAD, as a person or an
agent would leave a moment between commands. The distant branch defaults to
the mirror's branch whose tip differs from HEAD in the most paths. Run from
the repository root::

    python -m benchmarks.bench_checkout /work/.mirror/laravel+framework/repo --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Iterator
from pathlib import Path

from artifactfs.testing import GitHttpServer, git, git_env
from artifactfs.testing.mounts import MountedTree
from benchmarks.bench_agent import prepare_copy, stop_mount
from benchmarks.common import (
    Samples,
    file_creation_cost,
    goal_row,
    goals_table,
    mirror_argument_parser,
    ratio_text,
    rotated,
    run,
    samples_table,
    scratch,
    seconds_text,
    table,
    timed,
    uptime_text,
    warm_page_cache,
)

CONTENDERS = ("clone", "mount")
RATIO_GOAL = 2.0
SETTLE_TIMEOUT = 120.0
READY_TIMEOUT = 900.0


def distant_branch(repo: Path, head_branch: str) -> str:
    """The branch whose tip differs from ``head_branch`` in the most paths."""
    branches = git(repo, "for-each-ref", "--format=%(refname:lstrip=2)", "refs/heads/").decode().split()
    changed = {
        branch: len(git(repo, "diff", "--name-only", head_branch, branch).splitlines())
        for branch in branches
        if branch != head_branch
    }
    if not changed:
        raise SystemExit(f"{repo} has no branch besides {head_branch}")
    return max(changed, key=lambda branch: changed[branch])


def steps(head_branch: str, distant: str, distant_commit: str) -> list[tuple[str, list[str]]]:
    return [
        ("checkout distant commit", ["checkout", "-q", "--detach", distant_commit]),
        ("checkout back", ["checkout", "-q", head_branch]),
        ("switch distant branch", ["switch", "-q", distant]),
        ("switch back", ["switch", "-q", head_branch]),
        ("reset --hard distant", ["reset", "-q", "--hard", distant_commit]),
        ("reset --hard back", ["reset", "-q", "--hard", f"origin/{head_branch}"]),
    ]


@contextlib.contextmanager
def serving(repo: Path) -> Iterator[str]:
    with scratch(repo.parent, "serve") as root:
        (root / "repo.git").symlink_to(repo)
        with GitHttpServer(root) as server:
            yield server.url("repo")


def git_in(tree: Path, arguments: list[str]) -> None:
    run(["git", *arguments], cwd=tree, env=git_env())


def run_clone(url: str, base: Path, plan: list[tuple[str, list[str]]], samples: Samples) -> None:
    tree = base / "clone"
    samples.add("clone: git clone", timed(lambda: run(["git", "clone", "-q", url, str(tree)], env=git_env())))
    for name, arguments in plan:
        samples.add(f"clone: {name}", timed(functools.partial(git_in, tree, arguments)))


def settle(mount: MountedTree, head: str) -> None:
    """Wait until the daemon shows ``head`` (it follows HEAD after the git command returns)."""
    mount.wait_for(lambda status: status["head"] == head, SETTLE_TIMEOUT, 0.01)


def run_mount(url: str, base: Path, plan: list[tuple[str, list[str]]], samples: Samples) -> None:
    mount = MountedTree(url, base / "mnt", base / "state")
    try:
        samples.add("mount: artifactfs mount", timed(mount.mount))
        mount.wait_for(
            lambda status: status["history_complete"] and status["hydration"]["complete"],
            timeout=READY_TIMEOUT,
            interval=0.2,
        )
        for name, arguments in plan:
            samples.add(f"mount: {name}", timed(functools.partial(git_in, mount.path, arguments)))
            head = run(["git", "rev-parse", "HEAD"], cwd=mount.path, env=git_env()).strip()
            settled = timed(functools.partial(settle, mount, head))
            samples.add(f"mount: {name} (daemon settles)", settled)
        status = run(["git", "status", "--porcelain"], cwd=mount.path, env=git_env())
        if status:
            raise SystemExit(f"the mount is not clean after the round:\n{status[:2000]}")
        hydration = mount.status()["hydration"]
        print(f"  mount totals after the round: {hydration['total_blobs']} blobs", flush=True)
    finally:
        stop_mount(mount)


def report(samples: Samples, plan: list[tuple[str, list[str]]]) -> None:
    print()
    print(samples_table(samples))
    rows = []
    clone_total = mount_total = 0.0
    for name, _ in plan:
        clone = samples.median(f"clone: {name}")
        mount = samples.median(f"mount: {name}")
        clone_total += clone
        mount_total += mount
        rows.append([name, seconds_text(clone), seconds_text(mount), ratio_text(mount, clone)])
    rows.append(
        [
            "all six",
            seconds_text(clone_total),
            seconds_text(mount_total),
            ratio_text(mount_total, clone_total),
        ]
    )
    print()
    print(table(["command (medians)", "clone", "mount", "mount / clone"], rows))
    print()
    verdict = mount_total <= RATIO_GOAL * clone_total
    print(
        goals_table(
            [goal_row(f"mount <= {RATIO_GOAL:g}x clone", ratio_text(mount_total, clone_total), verdict)]
        )
    )


def bench(source: Path, arguments: argparse.Namespace) -> None:
    workdir: Path = arguments.workdir
    print(f"load at start: {uptime_text()}")
    with scratch(workdir, "checkout-corpus") as corpus_dir:
        prepared = prepare_copy(source, corpus_dir / "repo.git")
        repo = prepared.path
        head_branch = git(repo, "symbolic-ref", "--short", "HEAD").decode().strip()
        distant = arguments.to or distant_branch(repo, head_branch)
        distant_commit = git(repo, "rev-parse", f"{distant}^{{commit}}").decode().strip()
        changed = len(git(repo, "diff", "--name-only", head_branch, distant_commit).splitlines())
        files = len(git(repo, "ls-tree", "-r", "--name-only", head_branch).splitlines())
        print(f"\n## Branch switching: {source}")
        print(
            f"{head_branch} ({files} files) <-> {distant} ({distant_commit[:12]}): {changed} paths differ; "
            f"{arguments.rounds} rounds; workdir {workdir} "
            f"(creating a file there costs {file_creation_cost(workdir):.0f} us)",
            flush=True,
        )
        warm_page_cache(repo)
        plan = steps(head_branch, distant, distant_commit)
        samples = Samples()
        with serving(repo) as url:
            for round_number in range(arguments.rounds):
                for contender in rotated(CONTENDERS, round_number):
                    with scratch(workdir, f"checkout-{contender}") as base:
                        started = time.perf_counter()
                        (run_clone if contender == "clone" else run_mount)(url, base, plan, samples)
                    print(
                        f"round {round_number + 1}/{arguments.rounds} {contender}: "
                        f"{time.perf_counter() - started:.1f} s",
                        flush=True,
                    )
    report(samples, plan)
    print(f"\nload at end: {uptime_text()}")


def main() -> None:
    parser = mirror_argument_parser(__doc__, rounds=3)
    parser.add_argument("--to", help="the distant branch (default: the one differing from HEAD most)")
    arguments = parser.parse_args()
    bench(arguments.repo.resolve(), arguments)


if __name__ == "__main__":
    main()
