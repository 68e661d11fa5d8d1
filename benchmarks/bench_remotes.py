"""Time to mount from remotes other than a filtering smart-HTTP server, on a real mirror.

Two comparisons, each contender once per round in a rotated order, fresh
directories every time:

- **no filter**: the copy served over smart HTTP with ``uploadpack.allowFilter=false``
  and no ``object-info`` (as some forges serve). ``artifactfs mount`` until the
  tree is listable, and until every blob of the tip is stored (the tip's pack
  streamed to its end), beside ``git clone --depth 1`` (with checkout).
  Goal: listable within 0.5x the depth-1 clone.
- **ssh**: the copy served by a real ``sshd`` on 127.0.0.1 (key authentication,
  protocol v2 through ``GIT_PROTOCOL``). ``artifactfs mount ssh://...`` until
  listable, beside ``git clone --filter=blob:none`` over the same ssh, with and
  without checkout.

The repository is a bare mirror on this machine; like ``bench_agent`` the
script serves a prepared copy (branches and tags only, missing blobs replaced,
repacked with a bitmap), never the mirror itself. Run from the repository root,
as root::

    python -m benchmarks.bench_remotes /work/.mirror/laravel+framework/repo --rounds 5
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from artifactfs.testing import GitHttpServer, git_env
from artifactfs.testing.mounts import MountedTree
from artifactfs.testing.sshserver import SshServer
from benchmarks.bench_agent import prepare_copy
from benchmarks.common import (
    Samples,
    goal_row,
    goals_table,
    mirror_argument_parser,
    ratio_text,
    rotated,
    run,
    samples_table,
    scratch,
    table,
    timed,
    uptime_text,
    warm_page_cache,
)

PLAIN_MOUNT = "no filter: mount -> tree listable"
PLAIN_BLOBS = "no filter: mount -> every tip blob stored"
PLAIN_CLONE = "no filter: git clone --depth 1"
SSH_MOUNT = "ssh: mount -> tree listable"
SSH_CLONE = "ssh: git clone --filter=blob:none"
SSH_CLONE_BARE = "ssh: git clone --filter=blob:none --no-checkout"
NO_FILTER_GOAL = 0.5


def measure_mount(
    url: str, workdir: Path, env: dict[str, str], samples: Samples, listable: str, complete: str | None
) -> None:
    """One mount from a fresh state root: until listable, then (``complete``) until every blob is stored."""
    with scratch(workdir, "mount") as base:
        tree = MountedTree(url, base / "mnt", base / "state", env=env)
        started = time.perf_counter()
        try:
            tree.mount()
            if not os.listdir(tree.path):
                raise RuntimeError("the mounted tree is empty")
            samples.add(listable, time.perf_counter() - started)
            if complete is not None:
                status = tree.wait_for(
                    lambda s: (
                        s["hydration"]["hydrated_blobs"] + s["hydration"]["failed_blobs"]
                        >= s["hydration"]["total_blobs"]
                    ),
                    timeout=600,
                    interval=0.02,
                )
                samples.add(complete, time.perf_counter() - started)
                if status["hydration"]["failed_blobs"]:
                    raise RuntimeError(f"{status['hydration']['failed_blobs']} blobs failed")
        finally:
            tree.unmount()


def measure_clone(
    url: str, workdir: Path, env: dict[str, str], samples: Samples, name: str, *options: str
) -> None:
    with scratch(workdir, "clone") as base:
        command = ["git", "clone", "--quiet", *options, url, str(base / "clone")]
        samples.add(name, timed(lambda: run(command, env=env)))


def run_rounds(contenders: dict[str, Callable[[], None]], rounds: int) -> None:
    for round_number in range(rounds):
        for name in rotated(list(contenders), round_number):
            contenders[name]()
        print(f"round {round_number + 1}/{rounds} done ({uptime_text()})", flush=True)


def bench_no_filter(copy: Path, workdir: Path, rounds: int) -> Samples:
    samples = Samples()
    env = git_env()
    with (
        scratch(workdir, "serve-plain") as root,
        GitHttpServer(root, object_info=False, allow_filter=False) as server,
    ):
        (root / "repo.git").symlink_to(copy)
        url = server.url("repo")
        run_rounds(
            {
                "mount": lambda: measure_mount(url, workdir, env, samples, PLAIN_MOUNT, PLAIN_BLOBS),
                "clone": lambda: measure_clone(url, workdir, env, samples, PLAIN_CLONE, "--depth", "1"),
            },
            rounds,
        )
    return samples


def bench_ssh(copy: Path, workdir: Path, rounds: int) -> Samples:
    samples = Samples()
    with scratch(workdir, "sshd") as directory, SshServer(directory) as server:
        env = {**git_env(), "GIT_SSH_COMMAND": server.ssh_command}
        url = server.url(copy)
        run_rounds(
            {
                "mount": lambda: measure_mount(url, workdir, env, samples, SSH_MOUNT, None),
                "clone": lambda: measure_clone(url, workdir, env, samples, SSH_CLONE, "--filter=blob:none"),
                "clone-bare": lambda: measure_clone(
                    url, workdir, env, samples, SSH_CLONE_BARE, "--filter=blob:none", "--no-checkout"
                ),
            },
            rounds,
        )
    return samples


def report(plain: Samples, ssh: Samples) -> None:
    print()
    print(samples_table(plain, [PLAIN_MOUNT, PLAIN_BLOBS, PLAIN_CLONE]))
    print()
    print(samples_table(ssh, [SSH_MOUNT, SSH_CLONE, SSH_CLONE_BARE]))
    plain_mount, plain_clone = plain.median(PLAIN_MOUNT), plain.median(PLAIN_CLONE)
    ssh_mount = ssh.median(SSH_MOUNT)
    print()
    print(
        table(
            ["ratio (medians)", "value"],
            [
                ["no filter: mount / git clone --depth 1", ratio_text(plain_mount, plain_clone)],
                [
                    "no filter: every blob stored / git clone --depth 1",
                    ratio_text(plain.median(PLAIN_BLOBS), plain_clone),
                ],
                ["ssh: mount / git clone --filter=blob:none", ratio_text(ssh_mount, ssh.median(SSH_CLONE))],
                [
                    "ssh: mount / git clone --filter=blob:none --no-checkout",
                    ratio_text(ssh_mount, ssh.median(SSH_CLONE_BARE)),
                ],
            ],
        )
    )
    print()
    print(
        goals_table(
            [
                goal_row(
                    f"no filter: listable <= {NO_FILTER_GOAL}x git clone --depth 1",
                    ratio_text(plain_mount, plain_clone),
                    plain_mount <= NO_FILTER_GOAL * plain_clone,
                )
            ]
        )
    )


def main() -> None:
    parser = mirror_argument_parser(__doc__, rounds=5)
    arguments = parser.parse_args()
    workdir: Path = arguments.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    with scratch(workdir, "remotes-copy") as base:
        prepared = prepare_copy(arguments.repo.resolve(), base / "repo.git")
        warm_page_cache(prepared.path)
        print(
            f"## Remotes: {arguments.repo} (copy prepared in {prepared.seconds:.0f} s, "
            f"{prepared.placeholders} placeholder blobs); {arguments.rounds} rounds; {uptime_text()}",
            flush=True,
        )
        plain = bench_no_filter(prepared.path, workdir, arguments.rounds)
        ssh = bench_ssh(prepared.path, workdir, arguments.rounds)
    report(plain, ssh)
    print(f"\n{uptime_text()}")


if __name__ == "__main__":
    main()
