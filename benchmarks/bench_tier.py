"""Machine B of a fleet: its full hydration and first-minute agent task, by where blobs come from.

Machine A mounts a real repository (a prepared copy of a mirror, as in
``bench_agent``) with the shared tier on a local SeaweedFS S3 server, hydrates
it and writes it through. Machine B (a fresh state root every time) then
mounts the same commit three ways, in a rotated order per round:

- ``tier alone``: with the tier, and its origin switched off right after the
  mount (a proxy in front of the server resets open connections and refuses
  new ones), so every blob must come from the tier;
- ``origin alone``: without the tier;
- ``both``: with the tier and the origin up.

B's task is bench_agent's without the push (the origin is gone in one
contender): read every manifest, read N source files, edit 3, ``git
status``, ``git add -A``, ``git commit``. Then the time from the mount's
start until every blob of the tree is hydrated, and the requests and blobs
each source served (from B's status) and the blob requests the origin server
saw. Run from the repository root, as root::

    python -m benchmarks.bench_tier /work/.mirror/laravel+framework/repo --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifactfs.testing import GitHttpServer
from artifactfs.testing.faultproxy import FaultProxy
from artifactfs.testing.mounts import MountedTree
from artifactfs.testing.s3server import SeaweedS3
from benchmarks.bench_agent import (
    EDIT,
    MANIFESTS,
    SOURCES,
    Plan,
    edit_files,
    plan_task,
    prepare_copy,
    read_files,
    stop_mount,
    user_environment,
)
from benchmarks.common import (
    mirror_argument_parser,
    percentile,
    rotated,
    run,
    scratch,
    seconds_text,
    table,
    uptime_text,
    warm_page_cache,
)

TIER_ALONE = "tier alone"
ORIGIN_ALONE = "origin alone"
BOTH = "both"
CONTENDERS = (TIER_ALONE, ORIGIN_ALONE, BOTH)
MOUNT = "mount"
STATUS = "git status"
ADD = "git add -A"
COMMIT = "git commit"
TASK = "task (mount to commit)"
HYDRATED = "full hydration"
STEPS = (MOUNT, MANIFESTS, SOURCES, EDIT, STATUS, ADD, COMMIT, TASK, HYDRATED)
HYDRATION_TIMEOUT = 600.0


@dataclass
class Outcome:
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    read_latencies: list[float] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    origin_blob_wants: int = 0


@contextlib.contextmanager
def serving(repo: Path, base: Path) -> Iterator[tuple[GitHttpServer, FaultProxy]]:
    """The origin: a server, and a proxy in front of it that can be switched off (connections reset)."""
    root = base / "served"
    root.mkdir()
    (root / "repo.git").symlink_to(repo)
    with GitHttpServer(root) as server, FaultProxy(f"http://127.0.0.1:{server.port}") as proxy:
        yield server, proxy


def seed_tier(repo: Path, workdir: Path, tier_url: str, s3: SeaweedS3) -> float:
    """Machine A: mount with the tier, hydrate, publish. Returns the seconds until published."""
    with scratch(workdir, "tier-a") as base, serving(repo, base) as (server, _):
        mount = MountedTree(
            server.url("repo"), base / "tree", base / "state", ("--blob-store", tier_url), s3.env()
        )
        started = time.perf_counter()
        mount.mount()
        try:
            mount.wait_for(
                lambda status: status["tier"]["published"]["packs"] > 0 and status["hydration"]["complete"],
                timeout=HYDRATION_TIMEOUT,
                interval=0.2,
            )
            return time.perf_counter() - started
        finally:
            stop_mount(mount)


def machine_b(contender: str, repo: Path, base: Path, plan: Plan, tier_url: str, s3: SeaweedS3) -> Outcome:
    outcome = Outcome()
    environment = user_environment()
    arguments = () if contender == ORIGIN_ALONE else ("--blob-store", tier_url)
    env = {
        name: environment[name]
        for name in ("GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL", "GIT_TERMINAL_PROMPT")
    }
    if contender != ORIGIN_ALONE:
        env.update(s3.env())
    tree = base / "tree"

    def step(name: str, action: Any) -> None:
        started = time.perf_counter()
        try:
            action()
        except Exception as error:  # a failed step is a result; the run goes on
            outcome.failures[name] = (str(error).strip().splitlines() or [type(error).__name__])[-1][:300]
            return
        outcome.seconds[name] = time.perf_counter() - started

    with serving(repo, base) as (server, origin):
        mount = MountedTree(origin.url("repo"), tree, base / "state", arguments, env)
        started = time.perf_counter()
        try:
            step(MOUNT, mount.mount)
            if MOUNT in outcome.failures:
                return outcome
            wants_at_mount = _blob_wants(server)
            if contender == TIER_ALONE:
                origin.go_down()
            step(MANIFESTS, lambda: read_files(tree, plan.manifests, []))
            step(SOURCES, lambda: read_files(tree, plan.sources, outcome.read_latencies))
            step(EDIT, lambda: edit_files(tree, plan.edits))
            for name, git_arguments in (
                (STATUS, ["status"]),
                (ADD, ["add", "-A"]),
                (COMMIT, ["commit", "--quiet", "-m", "tier-bench: edit files"]),
            ):
                step(
                    name,
                    lambda git_arguments=git_arguments: run(
                        ["git", *git_arguments], cwd=tree, env=environment
                    ),
                )
            if not outcome.failures:
                outcome.seconds[TASK] = time.perf_counter() - started
            step(
                HYDRATED,
                lambda: mount.wait_for(
                    lambda status: status["hydration"]["complete"], timeout=HYDRATION_TIMEOUT, interval=0.1
                ),
            )
            if HYDRATED in outcome.seconds:
                outcome.seconds[HYDRATED] = time.perf_counter() - started
            outcome.sources = mount.status()["hydration"]["sources"]
            outcome.origin_blob_wants = _blob_wants(server) - wants_at_mount
        finally:
            stop_mount(mount)
    return outcome


def _blob_wants(server: GitHttpServer) -> int:
    """Blobs the origin server was asked for by id (fetches without a filter)."""
    return sum(record.want_count for record in server.requests if not record.has_filter)


def report(results: dict[str, list[Outcome]], plan: Plan) -> None:
    rows = []
    for name in STEPS:
        row = [name]
        for contender in CONTENDERS:
            values = [o.seconds[name] for o in results[contender] if name in o.seconds]
            failed = sum(1 for o in results[contender] if name in o.failures)
            text = seconds_text(statistics.median(values)) if values else "FAILED" if failed else "-"
            row.append(f"{text} ({failed} FAILED)" if failed and values else text)
        rows.append(row)
    for label, fraction in (("source read p50", 0.5), ("source read p99", 0.99)):
        row = [label]
        for contender in CONTENDERS:
            latencies = [value for o in results[contender] for value in o.read_latencies]
            row.append(f"{percentile(latencies, fraction) * 1000:.1f} ms" if latencies else "-")
        rows.append(row)
    print(f"\n## Machine B: medians ({len(plan.sources)} source reads)")
    print(table(["step", *CONTENDERS], rows))
    rows = []
    for contender in CONTENDERS:
        for outcome_index, outcome in enumerate(results[contender]):
            for source, stats in outcome.sources.items():
                rows.append(
                    [
                        contender,
                        str(outcome_index + 1),
                        source,
                        str(stats["requests"]),
                        str(stats["blobs"]),
                        f"{stats['bytes'] / 1e6:.1f} MB",
                        str(stats["errors"]),
                    ]
                )
            rows.append(
                [
                    contender,
                    str(outcome_index + 1),
                    "origin server: blobs wanted",
                    "",
                    str(outcome.origin_blob_wants),
                    "",
                    "",
                ]
            )
    print("\n## Requests per source (machine B's status)")
    print(table(["contender", "round", "source", "requests", "blobs", "bytes", "errors"], rows))
    for contender in CONTENDERS:
        for outcome in results[contender]:
            for step_name, message in outcome.failures.items():
                print(f"- {contender}: {step_name} FAILED: {message}")


def bench(source: Path, arguments: argparse.Namespace) -> None:
    workdir: Path = arguments.workdir
    print(f"load at start: {uptime_text()}")
    with scratch(workdir, "tier-corpus") as corpus_dir, SeaweedS3(corpus_dir / "s3") as s3:
        prepared = prepare_copy(source, corpus_dir / "repo.git")
        plan = plan_task(prepared.path, arguments.reads, 3, arguments.seed)
        warm_page_cache(prepared.path)
        s3.make_bucket("fleet")
        tier_url = "s3://fleet/bench"
        print(f"\n## Shared tier: {source}")
        print(
            f"{plan.files} files at the tip; the task reads {len(plan.manifests)} manifests "
            f"and {len(plan.sources)} sources"
        )
        published = seed_tier(prepared.path, workdir, tier_url, s3)
        listing = s3.client().list_objects_v2(Bucket="fleet", Prefix="bench/")
        objects = listing.get("Contents", [])
        print(
            f"machine A: mounted, hydrated and published in {published:.1f} s; the tier holds "
            f"{len(objects)} objects, {sum(o['Size'] for o in objects) / 1e6:.1f} MB",
            flush=True,
        )
        results: dict[str, list[Outcome]] = {contender: [] for contender in CONTENDERS}
        for round_number in range(arguments.rounds):
            for contender in rotated(CONTENDERS, round_number):
                with scratch(workdir, f"tier-b-{contender.replace(' ', '-')}") as base:
                    outcome = machine_b(contender, prepared.path, base, plan, tier_url, s3)
                results[contender].append(outcome)
                done = ", ".join(
                    f"{name} {seconds_text(outcome.seconds[name])}"
                    for name in (TASK, HYDRATED)
                    if name in outcome.seconds
                )
                print(f"round {round_number + 1} {contender}: {done or 'FAILED'}", flush=True)
    report(results, plan)
    print(f"\nload at end: {uptime_text()}")


def main() -> None:
    parser = mirror_argument_parser(__doc__, rounds=3)
    parser.add_argument("--reads", type=int, default=300, help="source files read (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the file choice (default 0)")
    arguments = parser.parse_args()
    bench(arguments.repo.resolve(), arguments)


if __name__ == "__main__":
    main()
