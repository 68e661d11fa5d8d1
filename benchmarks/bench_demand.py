"""Demand-read latency: how long a read of one file that is not local yet blocks,
idle (``--hydrate none``) and while background hydration runs at full speed,
against the cost of one protocol-v2 request for one blob in the same run.

Files under 256 KiB are read one at a time (open, read to the end, close),
in a seeded random order that favours the classes the background fetches
last, so that under load most reads still find their blob missing. A read
counts only if the daemon's hydration record says its blob arrived because
it was demanded (a blob the background lanes brought first was local). The
baseline is a raw timed ``fetch`` of one random blob through
``artifactfs.remote`` (request, pack, checksum) made just before each read,
so it runs under the same load as the reads. Run from the repository root::

    python -m benchmarks.bench_demand                           # 5000x40000, 200 reads, 3 rounds
    python -m benchmarks.bench_demand --corpus 1000x500 --reads 50 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import trio

from artifactfs.hydrator.priority import builtin_class
from artifactfs.remote import RemoteURL, open_remote
from artifactfs.testing import git
from artifactfs.testing.mounts import MountedTree
from benchmarks.common import (
    Corpus,
    argument_parser,
    banner,
    goal_row,
    goals_table,
    scratch,
    selected_corpora,
    served,
    table,
)

SMALL_FILE = 256 << 10
GOAL_P50 = 0.010
GOAL_P99 = 0.050
IDLE = "idle (--hydrate none)"
LOADED = "under background hydration"


def small_files(repo: Path) -> dict[str, str]:
    """(path -> blob oid) of every regular file under 256 KiB at the tip."""
    files = {}
    for line in git(repo, "ls-tree", "-r", "-l", "HEAD").decode().splitlines():
        meta, path = line.split("\t", 1)
        mode, kind, oid, size = meta.split()
        if kind == "blob" and mode != "120000" and int(size) < SMALL_FILE:
            files[path] = oid
    return files


def reading_order(files: dict[str, str], count: int, seed: int) -> list[str]:
    """``count`` random paths, those the background lanes fetch last first (sorted by class, shuffled within)."""
    rng = random.Random(seed)
    paths = sorted(files)
    rng.shuffle(paths)
    paths.sort(key=lambda path: -int(builtin_class(path)))
    chosen = paths[:count]
    rng.shuffle(chosen)
    return chosen


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _timed_fetch(url: str, oid: str) -> float:
    """Seconds for one v2 ``fetch`` of one blob until its pack is complete and checked (connection already open)."""
    async with await open_remote(RemoteURL.parse(url)) as session:
        started = time.perf_counter()
        async with session.fetch([oid]) as response:
            async for _ in response.pack_chunks():
                pass
        return time.perf_counter() - started


def measure_reads(
    url: str, workdir: Path, paths: list[str], others: list[str], *, hydrate: str
) -> tuple[list[float], list[float], int]:
    """Mount fresh and read ``paths`` one at a time, each after one raw fetch of a blob from ``others``.

    Returns the latencies of the reads whose blob was demanded, those of the
    raw fetches (the baseline, under the same load), and how many reads found
    their blob local already.
    """
    with scratch(workdir, "demand") as base:
        tree = MountedTree(url, base / "mnt", base / "state", ["--hydrate", hydrate])
        tree.mount()
        try:
            if hydrate == "none":  # idle: let start-up work (index, history) finish first
                tree.wait_for(lambda status: status["history_complete"], timeout=300)
            elapsed: dict[str, float] = {}
            baseline: list[float] = []
            for path, other in zip(paths, others, strict=True):
                baseline.append(trio.run(_timed_fetch, url, other))
                started = time.perf_counter()
                with open(tree.path / path, "rb") as stream:
                    while stream.read(1 << 20):
                        pass
                elapsed[path] = time.perf_counter() - started
            demanded = {arrival["path"] for arrival in tree.record() if arrival["demanded"]}
        finally:
            tree.unmount()
    latencies = [seconds for path, seconds in elapsed.items() if path in demanded]
    return latencies, baseline, len(paths) - len(latencies)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def bench(corpus: Corpus, arguments: argparse.Namespace) -> None:
    banner("Demand reads", corpus, arguments.rounds, arguments.workdir)
    files = small_files(corpus.path)
    reads: dict[str, list[float]] = {IDLE: [], LOADED: []}
    fetches: dict[str, list[float]] = {IDLE: [], LOADED: []}
    local: dict[str, int] = {IDLE: 0, LOADED: 0}
    with served(corpus) as url:
        for round_number in range(arguments.rounds):
            seed = arguments.seed + round_number
            paths = reading_order(files, arguments.reads, seed)
            others = random.Random(seed + 1).choices(sorted(files.values()), k=len(paths))
            for name, hydrate in ((IDLE, "none"), (LOADED, "background")):
                latencies, baseline, found_local = measure_reads(
                    url, arguments.workdir, paths, others, hydrate=hydrate
                )
                reads[name] += latencies
                fetches[name] += baseline
                local[name] += found_local
            print(
                f"round {round_number + 1}/{arguments.rounds}: idle p50 {ms(statistics.median(reads[IDLE]))}, "
                f"loaded p50 {ms(statistics.median(reads[LOADED]) if reads[LOADED] else 0.0)}",
                flush=True,
            )
    rows = []
    goals = []
    for name in (IDLE, LOADED):
        request = statistics.median(fetches[name])
        rows.append(
            [
                f"{name}: one raw v2 fetch of one blob (baseline)",
                str(len(fetches[name])),
                ms(request),
                ms(percentile(fetches[name], 0.99)),
                "1.0x",
                "-",
            ]
        )
        latencies = reads[name]
        if not latencies:
            rows.append([f"{name}: demand read", "0", "-", "-", "-", str(local[name])])
            continue
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        rows.append(
            [
                f"{name}: demand read",
                str(len(latencies)),
                ms(p50),
                ms(p99),
                f"{p50 / request:.1f}x",
                str(local[name]),
            ]
        )
        goals.append(goal_row(f"{name}: p50 <= 10 ms", ms(p50), p50 <= GOAL_P50))
        goals.append(goal_row(f"{name}: p99 <= 50 ms", ms(p99), p99 <= GOAL_P99))
    print(
        f"\n{len(files)} files under 256 KiB at the tip; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n"
    )
    print(
        table(
            [
                "non-local file < 256 KiB, read one at a time",
                "samples",
                "p50",
                "p99",
                "p50 / baseline",
                "skipped (already local)",
            ],
            rows,
        )
    )
    print()
    print(goals_table(goals))


def main() -> None:
    parser = argument_parser(__doc__ or "", ["5000x40000"], rounds=3)
    parser.add_argument("--reads", type=int, default=200, help="files read per mount (default 200)")
    arguments = parser.parse_args()
    for corpus in selected_corpora(arguments):
        bench(corpus, arguments)


if __name__ == "__main__":
    main()
