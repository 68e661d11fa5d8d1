"""Shared helpers for the benchmark scripts: command-line options, corpus selection,
serving, timing, medians and result tables (one place for each)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from artifactfs.testing import SERVED_CONFIG, GitHttpServer, git, git_env
from benchmarks.corpus import DEFAULT_CACHE, corpus_path

DEFAULT_WORKDIR = Path(os.environ.get("ARTIFACTFS_BENCH_WORKDIR", "/tmp/artifactfs-bench-work"))
IDENTITY_ENV = {
    "GIT_AUTHOR_NAME": "Bench Mark",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench Mark",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


# --------------------------------------------------------------------- options and corpora


@dataclass(frozen=True)
class Corpus:
    """A bare repository to serve, with a label for the tables."""

    label: str
    path: Path

    @property
    def commit_count(self) -> int:
        return int(git(self.path, "rev-list", "--count", "HEAD").decode())


def parse_corpus_spec(text: str) -> tuple[int, int]:
    """``FILESxCOMMITS`` (e.g. ``5000x40000``) as two integers."""
    files, separator, commits = text.lower().partition("x")
    if not separator or not files.isdigit() or not commits.isdigit():
        raise argparse.ArgumentTypeError(f"corpus {text!r} is not FILESxCOMMITS, e.g. 5000x40000")
    return int(files), int(commits)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def mirror_argument_parser(description: str | None, *, rounds: int) -> argparse.ArgumentParser:
    """The arguments of every benchmark on a served copy of a real mirror: the mirror, ``--rounds``
    (at least 1) and ``--workdir``; each benchmark adds its own."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repo", type=Path, help="bare repository (a mirror) to serve a copy of")
    parser.add_argument(
        "--rounds", type=_at_least_one, default=rounds, help=f"measured rounds (default {rounds})"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"where the served copy, clones, mounts and state roots go (default {DEFAULT_WORKDIR})",
    )
    return parser


def argument_parser(description: str, default_corpora: Sequence[str], rounds: int) -> argparse.ArgumentParser:
    """The options every benchmark shares."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus",
        action="append",
        type=parse_corpus_spec,
        metavar="FILESxCOMMITS",
        help=f"synthetic corpus to use, repeatable (default: {' and '.join(default_corpora)})",
    )
    parser.add_argument(
        "--repo",
        action="append",
        type=Path,
        metavar="PATH",
        help="use this existing bare repository (e.g. a mirror) instead; repeatable",
    )
    parser.add_argument("--rounds", type=int, default=rounds, help=f"measured rounds (default {rounds})")
    parser.add_argument("--seed", type=int, default=0, help="corpus generator seed")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"corpus cache (default {DEFAULT_CACHE})"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"where clones, mounts and state roots go (default {DEFAULT_WORKDIR})",
    )
    parser.set_defaults(default_corpora=[parse_corpus_spec(spec) for spec in default_corpora])
    return parser


def selected_corpora(arguments: argparse.Namespace) -> list[Corpus]:
    """The corpora the options name: ``--repo`` paths, else ``--corpus`` specs, else the defaults."""
    if arguments.repo:
        corpora = []
        for path in arguments.repo:
            repo = path.resolve()
            check_served_config(repo)
            corpora.append(Corpus(repo.name, repo))
        return corpora
    specs = arguments.corpus or arguments.default_corpora
    return [
        Corpus(
            f"{files} files / {commits} commits", corpus_path(files, commits, arguments.seed, arguments.cache)
        )
        for files, commits in specs
    ]


def check_served_config(repo: Path) -> None:
    """Exit with the commands to run if ``repo`` is not configured for partial-clone serving."""
    if git(repo, "rev-parse", "--is-bare-repository").decode().strip() != "true":
        sys.exit(f"{repo} is not a bare repository")
    missing = []
    for key, value in SERVED_CONFIG.items():
        found = subprocess.run(
            ["git", f"--git-dir={repo}", "config", "--get", key],
            check=False,
            capture_output=True,
            text=True,
            env=git_env(),
        )
        if found.stdout.strip() != value:
            missing.append(f"git --git-dir={repo} config {key} {value}")
    if missing:
        sys.exit("the repository is not configured for serving; run:\n  " + "\n  ".join(missing))


@contextlib.contextmanager
def served(corpus: Corpus) -> Iterator[str]:
    """Serve ``corpus`` over smart HTTP on 127.0.0.1 and yield its URL."""
    with tempfile.TemporaryDirectory(prefix="artifactfs-bench-serve-") as root:
        (Path(root) / "repo.git").symlink_to(corpus.path)
        warm_page_cache(corpus.path)
        with GitHttpServer(Path(root)) as server:
            yield server.url("repo")


def warm_page_cache(repo: Path) -> None:
    """Read the repository's packs once so the first measured round is not a cold-disk outlier."""
    for pack_file in (repo / "objects" / "pack").iterdir():
        with pack_file.open("rb") as stream:
            while stream.read(1 << 22):
                pass


def tip_blob_count(repo: Path) -> int:
    """Distinct blobs (files and symlinks) in the tip's tree: what hydration must fetch."""
    oids = set()
    for line in git(repo, "ls-tree", "-r", "HEAD").decode().splitlines():
        _, kind, oid = line.split("\t", 1)[0].split()
        if kind == "blob":
            oids.add(oid)
    return len(oids)


# --------------------------------------------------------------------- scratch space


@contextlib.contextmanager
def scratch(workdir: Path, label: str) -> Iterator[Path]:
    """A fresh empty directory under ``workdir``, removed afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=workdir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def file_creation_cost(workdir: Path, count: int = 500) -> float:
    """Microseconds to create and write one small file in ``workdir`` (disks differ wildly)."""
    with scratch(workdir, "calibrate") as directory:
        started = time.perf_counter()
        for index in range(count):
            (directory / f"f{index}").write_bytes(b"x" * 4096)
        return (time.perf_counter() - started) / count * 1e6


# --------------------------------------------------------------------- running and timing


def run(
    command: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> str:
    """Run a command, raising with its stderr on failure (or ``subprocess.TimeoutExpired``
    after ``timeout`` seconds, the command killed); returns stdout."""
    result = subprocess.run(
        list(command), check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def git_clone_seconds(url: str, destination: Path, *options: str) -> float:
    """Time a ``git clone`` as a user runs it (their config ignored for repeatability)."""
    return timed(lambda: run(["git", "clone", "--quiet", *options, url, str(destination)], env=git_env()))


def rotated(items: Sequence[str], round_number: int) -> list[str]:
    """``items`` starting at a different one each round, so no contender always goes first."""
    shift = round_number % len(items)
    return [*items[shift:], *items[:shift]]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.5 for p50, 0.99 for p99) of non-empty ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def uptime_text() -> str:
    """``uptime`` as printed, for the load average beside the figures (the machine may be shared)."""
    return run(["uptime"]).strip()


@dataclass
class Samples:
    """Measurements by name, in the order names first appeared."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.values.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])

    def spread(self, name: str) -> tuple[float, float]:
        return min(self.values[name]), max(self.values[name])


# --------------------------------------------------------------------- reporting


def seconds_text(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ratio_text(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with padded columns."""
    widths = [
        max(len(headers[column]), *(len(row[column]) for row in rows)) for column in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(headers), "|" + "|".join("-" * (width + 2) for width in widths) + "|", *map(line, rows)]
    )


def samples_table(samples: Samples, names: Sequence[str] | None = None) -> str:
    """Median, min and max of each measurement."""
    rows = []
    for name in names or list(samples.values):
        low, high = samples.spread(name)
        rows.append([name, seconds_text(samples.median(name)), seconds_text(low), seconds_text(high)])
    return table(["measurement", "median", "min", "max"], rows)


def goal_row(goal: str, measured: str, met: bool) -> list[str]:
    return [goal, measured, "met" if met else "MISSED"]


def goals_table(rows: Sequence[Sequence[str]]) -> str:
    return table(["goal", "measured", "verdict"], rows)


def banner(title: str, corpus: Corpus, rounds: int, workdir: Path) -> None:
    """What is being measured and on what, before the first round."""
    print(f"\n## {title}: {corpus.label}")
    print(
        f"repository {corpus.path} ({corpus.commit_count} commits); {rounds} rounds; "
        f"workdir {workdir} (creating a file there costs {file_creation_cost(workdir):.0f} us); "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
        flush=True,
    )
