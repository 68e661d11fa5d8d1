"""An agent's first task on a real repository with long history, timed end to end.

The task: get a working tree, read every manifest (``package.json``,
``composer.json`` ... found by name), read 300 source files picked at random
(seeded), edit 3 of them, then ``git status``, ``git add -A``, ``git commit``
and ``git push`` to a new branch. ArtifactFS does it through ``artifactfs
mount`` (the CLI, as a user runs it) beside a full ``git clone`` and a
``git clone --filter=blob:none`` (with checkout), interleaved in a rotated
order, with the repository served on 127.0.0.1 three ways:

- ``object-info``: protocol v2 with ``object-info`` advertised;
- ``no-object-info``: the capability hidden, as most forges serve;
- ``auth``: ``object-info`` on, every request behind HTTP Basic auth, the
  token in the URL (``http://x:TOKEN@127.0.0.1:PORT/repo.git``) and no
  credential helper anywhere.

The repository is a bare mirror already on this machine (benchmarks/README.md
says how to get one). The script never serves it in place: it builds a copy
with only branches and tags, replaces blobs the mirror lacks (snapshots may
omit large files) by a placeholder so that a full clone can be served, and
repacks it with a bitmap like a forge would. Each step that fails is reported
and the run goes on. Run from the repository root, as root::

    python -m benchmarks.bench_agent /path/to/mirror.git --rounds 3
    python -m benchmarks.bench_agent /path/to/mirror.git --rounds 1 --modes auth
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from artifactfs.hydrator.priority import PriorityClass, builtin_class
from artifactfs.state import StateRoot, pid_alive
from artifactfs.testing import SERVED_CONFIG, GitHttpServer, git, git_env
from artifactfs.testing.mounts import MountedTree, force_unmount
from benchmarks.common import (
    IDENTITY_ENV,
    file_creation_cost,
    goal_row,
    goals_table,
    mirror_argument_parser,
    percentile,
    ratio_text,
    rotated,
    run,
    scratch,
    seconds_text,
    table,
    uptime_text,
    warm_page_cache,
)
from benchmarks.corpus import EXTRA_SERVING_CONFIG

ARTIFACTFS = "artifactfs"
FULL = "full clone"
BLOBLESS = "blobless clone"
CONTENDERS = (ARTIFACTFS, FULL, BLOBLESS)
CLONE_OPTIONS: dict[str, tuple[str, ...]] = {FULL: (), BLOBLESS: ("--filter=blob:none",)}

GET = "mount / clone"
MANIFESTS = "read manifests"
SOURCES = "read sources"
EDIT = "edit files"
STATUS = "git status (first)"
ADD = "git add -A"
COMMIT = "git commit"
PUSH = "git push"
TOTAL = "total (end to end)"
STEPS = (GET, MANIFESTS, SOURCES, EDIT, STATUS, ADD, COMMIT, PUSH)

MODES = ("object-info", "no-object-info", "auth")
AUTH_USER = "x"
PLACEHOLDER = b"This file is absent from the mirror the benchmark was built from.\n"
STOP_SECONDS = 15.0

SPEEDUP_GOAL = 5.0
FIRST_STATUS_GOAL = 3.0
READ_P50_GOAL = 0.010
READ_P99_GOAL = 0.050


# --------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Prepared:
    """A served copy of a mirror and what preparing it took."""

    path: Path
    kept_refs: int
    dropped_refs: int
    placeholders: int
    seconds: float


def prepare_copy(source: Path, destination: Path) -> Prepared:
    """Copy the bare repository ``source`` to ``destination`` for serving: branches and tags
    only, every missing blob they reach replaced by a placeholder, repacked with a bitmap."""
    started = time.perf_counter()
    if not (source / "objects").is_dir():
        raise SystemExit(f"{source} is not a bare repository (no objects/ directory)")
    run(["git", "init", "--quiet", "--bare", str(destination)], env=git_env())
    for key, value in {**SERVED_CONFIG, **EXTRA_SERVING_CONFIG}.items():
        git(destination, "config", key, value)
    shutil.copytree(
        source / "objects",
        destination / "objects",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("*.promisor", "alternates"),
    )
    refs = git(
        source, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", "refs/tags/"
    ).decode()
    (destination / "packed-refs").write_text(refs)
    all_refs = len(git(source, "for-each-ref", "--format=%(refname)").splitlines())
    head = git(source, "symbolic-ref", "HEAD").decode().strip()
    git(destination, "symbolic-ref", "HEAD", head)
    missing = missing_objects(destination)
    if missing:
        fill_missing(destination, missing)
        if left := missing_objects(destination):
            raise SystemExit(f"{len(left)} objects are still missing after the rewrite, e.g. {left[0]}")
    git(destination, "repack", "-a", "-d", "-q", "--write-bitmap-index")
    git(destination, "commit-graph", "write", "--reachable")
    git(destination, "pack-refs", "--all")
    kept = len(refs.splitlines())
    return Prepared(destination, kept, all_refs - kept, len(missing), time.perf_counter() - started)


def missing_objects(repo: Path) -> list[str]:
    """Objects that branches and tags reach but the repository lacks."""
    listing = git(repo, "rev-list", "--objects", "--missing=print", "--branches", "--tags").decode()
    return [line[1:] for line in listing.splitlines() if line.startswith("?")]


def fill_missing(repo: Path, missing: Sequence[str]) -> None:
    """Rewrite history so every reference to a ``missing`` blob names a placeholder blob
    instead (``fast-export --no-data`` names blobs by id, so a same-length substitution
    keeps every data block's length right)."""
    placeholder = git(repo, "hash-object", "-w", "--stdin", input=PLACEHOLDER).decode().strip().encode()
    pattern = re.compile(b"|".join(oid.encode() for oid in missing))
    environment = git_env()
    exporter = subprocess.Popen(
        [
            "git",
            f"--git-dir={repo}",
            "fast-export",
            "--all",
            "--no-data",
            "--signed-tags=strip",
            "--reencode=no",
        ],
        stdout=subprocess.PIPE,
        env=environment,
    )
    importer = subprocess.Popen(
        ["git", f"--git-dir={repo}", "fast-import", "--force", "--quiet"],
        stdin=subprocess.PIPE,
        env=environment,
    )
    assert exporter.stdout is not None and importer.stdin is not None
    with exporter.stdout, importer.stdin:
        for line in exporter.stdout:
            importer.stdin.write(pattern.sub(placeholder, line))
    exported, imported = exporter.wait(), importer.wait()
    if exported != 0 or imported != 0:
        raise SystemExit(
            f"rewriting history around {len(missing)} missing blobs failed "
            f"(fast-export {exported}, fast-import {imported})"
        )


@dataclass(frozen=True)
class Plan:
    """The paths the task touches, the same for every contender and round."""

    files: int
    directories: int
    manifests: tuple[str, ...]
    sources: tuple[str, ...]
    edits: tuple[str, ...]


def plan_task(repo: Path, reads: int, edits: int, seed: int) -> Plan:
    """Every manifest of the tip, ``reads`` source files picked at random, ``edits`` of those."""
    listing = git(repo, "ls-tree", "-r", "-t", "-z", "HEAD").decode().split("\0")
    files: list[str] = []
    directories = 0
    for entry in filter(None, listing):
        meta, path = entry.split("\t", 1)
        mode = meta.split()[0]
        if mode == "040000":
            directories += 1
        elif mode in ("100644", "100755"):
            files.append(path)
    manifests = sorted(path for path in files if builtin_class(path) is PriorityClass.MANIFEST)
    sources = sorted(path for path in files if builtin_class(path) is PriorityClass.SOURCE)
    rng = random.Random(seed)
    picked = rng.sample(sources, min(reads, len(sources)))
    edited = rng.sample(picked, min(edits, len(picked)))
    return Plan(len(files), directories, tuple(manifests), tuple(picked), tuple(edited))


# --------------------------------------------------------------------- serving


@dataclass(frozen=True)
class Endpoint:
    """One way of serving the copy: the URL a user is given, and the secret in it."""

    mode: str
    url: str
    token: str | None

    def redact(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text


@contextlib.contextmanager
def serve_modes(repo: Path, modes: Sequence[str]) -> Iterator[dict[str, Endpoint]]:
    """One server per mode over the same repository (pushes go to distinct branches)."""
    with contextlib.ExitStack() as stack:
        endpoints = {}
        for mode in modes:
            root = Path(stack.enter_context(scratch(repo.parent, f"serve-{mode}")))
            (root / "repo.git").symlink_to(repo)
            token = secrets.token_urlsafe(18) if mode == "auth" else None
            server = stack.enter_context(
                GitHttpServer(
                    root, object_info=mode != "no-object-info", auth=(AUTH_USER, token) if token else None
                )
            )
            url = server.url("repo")
            if token:
                url = url.replace("http://", f"http://{AUTH_USER}:{token}@", 1)
            endpoints[mode] = Endpoint(mode, url, token)
        yield endpoints


def user_environment() -> dict[str, str]:
    """A user's git: no system or global config (so no credential helper), no prompts."""
    environment = {**git_env(), **IDENTITY_ENV}
    for name in ("GIT_ASKPASS", "SSH_ASKPASS"):
        environment.pop(name, None)
    return environment


# --------------------------------------------------------------------- the task


@dataclass
class Outcome:
    """One contender's task in one round: seconds per step, failures, read latencies."""

    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    read_latencies: list[float] = field(default_factory=list)


class Task:
    """Runs the task steps for one contender, recording each one's time or failure."""

    def __init__(self, endpoint: Endpoint, plan: Plan, timeout: float) -> None:
        self.endpoint = endpoint
        self.plan = plan
        self.timeout = timeout
        self.environment = user_environment()
        self.outcome = Outcome()

    def step(self, name: str, action: Callable[[], object]) -> bool:
        started = time.perf_counter()
        try:
            action()
        except Exception as error:  # any failing step is a result to report; the run goes on
            lines = str(error).strip().splitlines() or [type(error).__name__]
            self.outcome.failures[name] = self.endpoint.redact(" / ".join(lines[-3:]))[:400]
            return False
        self.outcome.seconds[name] = time.perf_counter() - started
        return True

    def run(self, contender: str, base: Path, branch: str) -> Outcome:
        tree = base / "tree"
        started = time.perf_counter()
        mount = None
        try:
            if contender == ARTIFACTFS:
                mount = MountedTree(self.endpoint.url, tree, base / "state", env=self._mount_environment())
                acquired = self.step(GET, mount.mount)
            else:
                clone = ["git", "clone", "--quiet", *CLONE_OPTIONS[contender], self.endpoint.url, str(tree)]
                acquired = self.step(GET, lambda: run(clone, env=self.environment, timeout=self.timeout))
            if acquired:
                self._work(tree, branch)
                if not self.outcome.failures:
                    self.outcome.seconds[TOTAL] = time.perf_counter() - started
        finally:
            if mount is not None:
                stop_mount(mount)
        return self.outcome

    def _work(self, tree: Path, branch: str) -> None:
        self.step(MANIFESTS, lambda: read_files(tree, self.plan.manifests, []))
        self.step(SOURCES, lambda: read_files(tree, self.plan.sources, self.outcome.read_latencies))
        self.step(EDIT, lambda: edit_files(tree, self.plan.edits))
        self.step(STATUS, lambda: self._git(tree, "status"))
        self.step(ADD, lambda: self._git(tree, "add", "-A"))
        if self.step(COMMIT, lambda: self._git(tree, "commit", "--quiet", "-m", "agent-bench: edit files")):
            self.step(PUSH, lambda: self._git(tree, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"))
        else:
            self.outcome.failures[PUSH] = "not run: the commit failed"

    def _git(self, tree: Path, *arguments: str) -> None:
        run(["git", *arguments], cwd=tree, env=self.environment, timeout=self.timeout)

    def _mount_environment(self) -> dict[str, str]:
        return {
            name: self.environment[name]
            for name in ("GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL", "GIT_TERMINAL_PROMPT")
        }


def read_files(tree: Path, paths: Sequence[str], latencies: list[float]) -> None:
    """Read each file whole, timing each; every file is tried, failures reported together."""
    failed: list[str] = []
    for path in paths:
        started = time.perf_counter()
        try:
            with open(tree / path, "rb") as stream:
                while stream.read(1 << 20):
                    pass
        except OSError as error:
            failed.append(f"{path}: {error.strerror or error}")
            continue
        latencies.append(time.perf_counter() - started)
    if failed:
        raise OSError(f"{len(failed)} of {len(paths)} reads failed, first {failed[0]}")


def edit_files(tree: Path, paths: Sequence[str]) -> None:
    """Edit like an agent's tool does: read the file, write it back whole with a line added."""
    for path in paths:
        target = tree / path
        data = target.read_bytes()
        target.write_bytes(data + b"\n// edited by the agent benchmark\n")


def stop_mount(mount: MountedTree) -> None:
    """Unmount, and end the daemon this mount started if it outlives the unmount."""
    pids = [record.pid for record in StateRoot(mount.root).runtimes()]
    try:
        mount.unmount()
    except (OSError, subprocess.SubprocessError) as error:
        print(f"  warning: artifactfs unmount failed ({error}); unmounting lazily", flush=True)
    finally:
        force_unmount(mount.path)
        for pid in pids:
            end_process(pid)


def end_process(pid: int) -> None:
    for signal_number in (None, signal.SIGTERM, signal.SIGKILL):
        if signal_number is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_number)
        deadline = time.monotonic() + STOP_SECONDS
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pid_alive(pid):
            return


# --------------------------------------------------------------------- reporting


@dataclass
class Results:
    """Every outcome, by mode and contender, in round order."""

    outcomes: dict[tuple[str, str], list[Outcome]] = field(default_factory=dict)

    def add(self, mode: str, contender: str, outcome: Outcome) -> None:
        self.outcomes.setdefault((mode, contender), []).append(outcome)

    def times(self, mode: str, contender: str, step: str) -> list[float]:
        return [o.seconds[step] for o in self.outcomes.get((mode, contender), []) if step in o.seconds]

    def median(self, mode: str, contender: str, step: str) -> float | None:
        values = self.times(mode, contender, step)
        return statistics.median(values) if values else None

    def failures(self, mode: str, contender: str, step: str) -> list[str]:
        return [o.failures[step] for o in self.outcomes.get((mode, contender), []) if step in o.failures]

    def latencies(self, mode: str, contender: str) -> list[float]:
        return [value for o in self.outcomes.get((mode, contender), []) for value in o.read_latencies]


def cell(results: Results, mode: str, contender: str, step: str) -> str:
    median = results.median(mode, contender, step)
    failed = len(results.failures(mode, contender, step))
    attempts = len(results.outcomes.get((mode, contender), []))
    if median is None:
        return "FAILED" if failed else "not run"
    text = seconds_text(median)
    return f"{text} ({failed}/{attempts} FAILED)" if failed else text


def ratio_cell(numerator: float | None, denominator: float | None) -> str:
    return ratio_text(numerator, denominator) if numerator is not None and denominator is not None else "n/a"


def report_mode(results: Results, mode: str, plan: Plan) -> list[list[str]]:
    """Print the tables for one serving mode; return its goal rows."""
    print(f"\n### mode: {mode}\n")
    rows = []
    for step in (*STEPS, TOTAL):
        ours, full, blobless = (results.median(mode, contender, step) for contender in CONTENDERS)
        rows.append(
            [
                step,
                *(cell(results, mode, contender, step) for contender in CONTENDERS),
                ratio_cell(ours, full),
                ratio_cell(ours, blobless),
            ]
        )
    print(table(["step (median)", *CONTENDERS, f"time vs {FULL}", f"time vs {BLOBLESS}"], rows))
    print(f"(time ratios of {ARTIFACTFS} to each clone: below 1.00x {ARTIFACTFS} is faster)")
    print()
    latency_rows = []
    for contender in CONTENDERS:
        values = results.latencies(mode, contender)
        latency_rows.append(
            [
                contender,
                str(len(values)),
                seconds_text(percentile(values, 0.5)) if values else "n/a",
                seconds_text(percentile(values, 0.99)) if values else "n/a",
            ]
        )
    print(f"reads of {len(plan.sources)} source files, every round pooled:")
    print(table(["contender", "reads", "p50", "p99"], latency_rows))
    ours_status = results.median(mode, ARTIFACTFS, STATUS)
    native_status = results.median(mode, FULL, STATUS)
    print(
        f"\nfirst `git status` after mount: {_seconds_or_na(ours_status)} vs the same status in the "
        f"full clone {_seconds_or_na(native_status)} ({ratio_cell(ours_status, native_status)})"
    )
    ours_total = results.median(mode, ARTIFACTFS, TOTAL)
    full_total = results.median(mode, FULL, TOTAL)
    ours_reads = results.latencies(mode, ARTIFACTFS)
    p50 = percentile(ours_reads, 0.5) if ours_reads else None
    p99 = percentile(ours_reads, 0.99) if ours_reads else None
    return [
        goal_row(
            f"{mode}: task >= {SPEEDUP_GOAL:.0f}x faster than a full clone",
            f"{ratio_cell(full_total, ours_total)} faster",
            ours_total is not None and full_total is not None and full_total >= SPEEDUP_GOAL * ours_total,
        ),
        goal_row(
            f"{mode}: first status <= {FIRST_STATUS_GOAL:.0f}x native",
            ratio_cell(ours_status, native_status),
            ours_status is not None
            and native_status is not None
            and ours_status <= FIRST_STATUS_GOAL * native_status,
        ),
        goal_row(
            f"{mode}: source read p50 <= {READ_P50_GOAL * 1000:.0f} ms",
            _seconds_or_na(p50),
            p50 is not None and p50 <= READ_P50_GOAL,
        ),
        goal_row(
            f"{mode}: source read p99 <= {READ_P99_GOAL * 1000:.0f} ms",
            _seconds_or_na(p99),
            p99 is not None and p99 <= READ_P99_GOAL,
        ),
    ]


def _seconds_or_na(seconds: float | None) -> str:
    return seconds_text(seconds) if seconds is not None else "n/a"


def report_failures(results: Results) -> None:
    rows = []
    for (mode, contender), outcomes in results.outcomes.items():
        for round_number, outcome in enumerate(outcomes, 1):
            for step, message in outcome.failures.items():
                rows.append([mode, contender, str(round_number), step, message])
    print("\n### failed steps\n")
    print(table(["mode", "contender", "round", "step", "error"], rows) if rows else "none")


def progress(mode: str, contender: str, round_number: int, rounds: int, outcome: Outcome) -> str:
    prefix = f"round {round_number + 1}/{rounds} {mode:<15} {contender:<15}"
    if TOTAL in outcome.seconds:
        return f"{prefix} total {seconds_text(outcome.seconds[TOTAL])}"
    return f"{prefix} FAILED: {', '.join(outcome.failures)}"


# --------------------------------------------------------------------- main


def bench(source: Path, arguments: argparse.Namespace) -> None:
    workdir: Path = arguments.workdir
    print(f"load at start: {uptime_text()}")
    with scratch(workdir, "agent-corpus") as corpus_dir:
        prepared = prepare_copy(source, corpus_dir / "repo.git")
        plan = plan_task(prepared.path, arguments.reads, arguments.edits, arguments.seed)
        commits = int(git(prepared.path, "rev-list", "--count", "HEAD").decode())
        print(f"\n## An agent's first task: {source}")
        print(
            f"{commits} commits on HEAD, {plan.files} files and {plan.directories} "
            f"directories at the tip; served copy has {prepared.kept_refs} branches and tags "
            f"({prepared.dropped_refs} other refs left out), {prepared.placeholders} missing blobs replaced by "
            f"a placeholder; prepared in {prepared.seconds:.1f} s"
        )
        print(
            f"task: read {len(plan.manifests)} manifests, {len(plan.sources)} source files (seed "
            f"{arguments.seed}), edit {len(plan.edits)}; {arguments.rounds} rounds; "
            f"modes {', '.join(arguments.modes)}; workdir {workdir} "
            f"(creating a file there costs {file_creation_cost(workdir):.0f} us)",
            flush=True,
        )
        warm_page_cache(prepared.path)
        results = Results()
        with serve_modes(prepared.path, arguments.modes) as endpoints:
            for round_number in range(arguments.rounds):
                for mode_index, mode in enumerate(arguments.modes):
                    for contender in rotated(CONTENDERS, round_number + mode_index):
                        slug = contender.replace(" ", "-")
                        with scratch(workdir, f"agent-{slug}") as base:
                            task = Task(endpoints[mode], plan, arguments.step_timeout)
                            outcome = task.run(
                                contender, base, f"agent-bench/{mode}/{slug}/{round_number + 1}"
                            )
                        results.add(mode, contender, outcome)
                        print(progress(mode, contender, round_number, arguments.rounds, outcome), flush=True)
    goals = []
    for mode in arguments.modes:
        goals.extend(report_mode(results, mode, plan))
    report_failures(results)
    print()
    print(goals_table(goals))
    print(f"\nload at end: {uptime_text()}")


def mode_list(text: str) -> list[str]:
    modes = [mode.strip() for mode in text.split(",") if mode.strip()]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"modes must be a comma-separated subset of {','.join(MODES)}")
    return modes


def main() -> None:
    parser = mirror_argument_parser(__doc__, rounds=3)
    parser.add_argument(
        "--modes",
        type=mode_list,
        default=list(MODES),
        help=f"serving modes, comma-separated (default {','.join(MODES)})",
    )
    parser.add_argument("--reads", type=int, default=300, help="source files read (default 300)")
    parser.add_argument("--edits", type=int, default=3, help="files edited, among those read (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the file choice (default 0)")
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=600.0,
        help="seconds before a clone or git command counts as failed (default 600)",
    )
    arguments = parser.parse_args()
    bench(arguments.repo.resolve(), arguments)


if __name__ == "__main__":
    main()
