"""Background hydration: from ``artifactfs mount`` until every manifest, every source
file and every blob of the tip is local, against ``git clone --filter=blob:none``
(with checkout) and a full ``git clone``; plus the daemon's peak RSS.

The daemon's status is polled over its control socket every 20 ms. Each round
uses a fresh state root and mountpoint (nothing cached); contenders run in a
rotated order. Run from the repository root::

    python -m benchmarks.bench_hydration                  # both default corpora, 5 rounds
    python -m benchmarks.bench_hydration --corpus 5000x40000 --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artifactfs.testing.mounts import MountedTree
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
    samples_table,
    scratch,
    seconds_text,
    selected_corpora,
    served,
    table,
    tip_blob_count,
)

POLL_SECONDS = 0.02
HYDRATION_TIMEOUT = 900.0
MOUNTED = "artifactfs mount -> tree listable"
MANIFESTS = "artifactfs -> all manifest blobs"
SOURCES = "artifactfs -> all source blobs"
EVERYTHING = "artifactfs -> every blob hydrated"
HISTORY = "artifactfs -> history complete (background)"
BLOBLESS = "git clone --filter=blob:none (with checkout)"
FULL = "git clone (full, with checkout)"
CLONES: dict[str, tuple[str, ...]] = {BLOBLESS: ("--filter=blob:none",), FULL: ()}


def class_done(status: dict[str, Any], label: str) -> bool:
    counters = status["hydration"]["classes"][label]
    return bool(counters["hydrated"] + counters["failed"] >= counters["total"])


def measure_mount(
    url: str, workdir: Path, expected_blobs: int, samples: Samples, memory: list[dict[str, int]]
) -> None:
    """Mount from a fresh state root and time each hydration milestone from the mount's start."""
    with scratch(workdir, "hydrate") as base:
        tree = MountedTree(url, base / "mnt", base / "state")
        started = time.perf_counter()
        try:
            tree.mount()
            samples.add(MOUNTED, time.perf_counter() - started)
            milestones = _poll_milestones(tree, started, expected_blobs)
            for name, seconds in milestones.items():
                samples.add(name, seconds)
            status = tree.status()
            failed = status["hydration"]["failed_blobs"]
            if failed:
                print(f"  warning: {failed} blobs failed to hydrate: {status['hydration']['errors'][:3]}")
            memory.append(_memory(int(status["pid"])))
        finally:
            tree.unmount()


def _poll_milestones(tree: MountedTree, started: float, expected_blobs: int) -> dict[str, float]:
    """Poll the daemon until every blob is hydrated and history is complete."""
    milestones: dict[str, float] = {}
    while len(milestones) < 4:
        status = tree.status()
        now = time.perf_counter() - started
        hydration = status["hydration"]
        registered = hydration["total_blobs"] >= expected_blobs
        checks = {
            MANIFESTS: registered and class_done(status, "manifest"),
            SOURCES: registered and class_done(status, "source"),
            EVERYTHING: registered and hydration["complete"],
            HISTORY: bool(status["history_complete"]),
        }
        for name, done in checks.items():
            if done and name not in milestones:
                milestones[name] = now
        if now > HYDRATION_TIMEOUT:
            raise RuntimeError(f"hydration incomplete after {HYDRATION_TIMEOUT:.0f} s: {hydration}")
        time.sleep(POLL_SECONDS)
    return milestones


def _memory(pid: int) -> dict[str, int]:
    """The daemon's peak and current resident set, in KiB, from /proc."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    return values


def measure_clone(url: str, workdir: Path, name: str, samples: Samples) -> None:
    with scratch(workdir, "clone") as base:
        samples.add(name, git_clone_seconds(url, base / "clone", *CLONES[name]))


def bench(corpus: Corpus, rounds: int, workdir: Path) -> None:
    banner("Hydration", corpus, rounds, workdir)
    expected = tip_blob_count(corpus.path)
    samples = Samples()
    memory: list[dict[str, int]] = []
    with served(corpus) as url:
        contenders: dict[str, Callable[[], None]] = {
            "mount": functools.partial(measure_mount, url, workdir, expected, samples, memory),
        }
        for name in CLONES:
            contenders[name] = functools.partial(measure_clone, url, workdir, name, samples)
        for round_number in range(rounds):
            for name in rotated(list(contenders), round_number):
                contenders[name]()
            print(
                f"round {round_number + 1}/{rounds}: all blobs {seconds_text(samples.values[EVERYTHING][-1])}, "
                f"blobless clone {seconds_text(samples.values[BLOBLESS][-1])}, "
                f"peak RSS {memory[-1]['VmHWM'] / 1024:.0f} MiB",
                flush=True,
            )
    print(f"\n{expected} distinct blobs at the tip\n")
    print(samples_table(samples, [MOUNTED, MANIFESTS, SOURCES, EVERYTHING, HISTORY, BLOBLESS, FULL]))
    everything = samples.median(EVERYTHING)
    manifests = samples.median(MANIFESTS)
    blobless = samples.median(BLOBLESS)
    print()
    print(
        table(
            ["ratio (medians)", "value"],
            [
                [f"every blob / {BLOBLESS}", ratio_text(everything, blobless)],
                [f"every blob / {FULL}", ratio_text(everything, samples.median(FULL))],
                [f"manifests / {BLOBLESS}", ratio_text(manifests, blobless)],
            ],
        )
    )
    peaks = sorted(entry["VmHWM"] for entry in memory)
    print(
        f"\ndaemon peak RSS (VmHWM) once every blob and the history are in: median {peaks[len(peaks) // 2] / 1024:.0f} MiB, "
        f"max {peaks[-1] / 1024:.0f} MiB; RSS at the end: max {max(e['VmRSS'] for e in memory) / 1024:.0f} MiB\n"
    )
    print(
        goals_table(
            [
                goal_row("all manifests <= 1 s", seconds_text(manifests), manifests <= 1.0),
                goal_row(
                    "full hydration <= 1.0x blobless clone + checkout",
                    ratio_text(everything, blobless),
                    everything <= blobless,
                ),
            ]
        )
    )


def main() -> None:
    parser = argument_parser(__doc__ or "", ["5000x40000", "5000x150000"], rounds=5)
    arguments: argparse.Namespace = parser.parse_args()
    for corpus in selected_corpora(arguments):
        bench(corpus, arguments.rounds, arguments.workdir)


if __name__ == "__main__":
    main()
