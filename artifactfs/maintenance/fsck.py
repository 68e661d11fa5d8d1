"""``artifactfs fsck``: check what a mount keeps on disk and repair what is safe to repair.

Checked, in order: the mountpoint and runtime record (a stale FUSE mount or
the record of a dead daemon is cleaned up), every blob in the shared blob
cache (damaged ones are deleted: the remote supplies them again on demand),
each gitdir (HEAD readable, ``git fsck --connectivity-only``), and each
overlay (SQLite integrity, every row well-formed, every data file present,
every row below a directory). Works on a mounted directory too: then the
overlay is only read, never changed, because the daemon owns it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from artifactfs.daemon.recovery import detach_stale_mount, is_stale_mount
from artifactfs.errors import CorruptObjectError, MountpointError
from artifactfs.overlay.store import OverlayRow, OverlayStoreError, inspect_database, parent_of
from artifactfs.snapshot.entries import EntryKind
from artifactfs.snapshot.tree import Snapshot, TreeCache
from artifactfs.state import MountState, StateRoot, pid_alive
from artifactfs.store.blobcache import BlobCache
from artifactfs.store.gitdir import GitDir

Severity = Literal["ok", "note", "repaired", "damaged"]

_GIT_FSCK_TIMEOUT = 600.0


@dataclass(frozen=True)
class Finding:
    severity: Severity
    message: str


@dataclass
class FsckReport:
    mountpoint: Path
    state_dirs: list[Path] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def add(self, severity: Severity, message: str) -> None:
        self.findings.append(Finding(severity, message))

    def count(self, severity: Severity) -> int:
        return sum(1 for finding in self.findings if finding.severity == severity)

    @property
    def clean(self) -> bool:
        """True when nothing is left damaged (repairs are fine)."""
        return self.count("damaged") == 0


def fsck(state: StateRoot, mountpoint: Path) -> FsckReport:
    """Check (and where safe, repair) everything ArtifactFS keeps for ``mountpoint``."""
    report = FsckReport(mountpoint)
    live_dir = _check_runtime(state, mountpoint, report)
    report.state_dirs = state.state_dirs(mountpoint)
    if not report.state_dirs:
        raise MountpointError(f"no ArtifactFS state for {mountpoint} under {state.root}")
    _check_blob_cache(BlobCache(state.blob_cache_dir), report)
    for state_dir in report.state_dirs:
        base = _check_gitdir(GitDir(MountState(state_dir).gitdir), report)
        _check_overlay(MountState(state_dir).overlay, base, state_dir == live_dir, report)
    return report


def _check_runtime(state: StateRoot, mountpoint: Path, report: FsckReport) -> Path | None:
    """Clean up after a dead daemon; returns the state directory of a live one."""
    if is_stale_mount(mountpoint):
        try:
            detach_stale_mount(mountpoint)
            report.add("repaired", f"detached the stale FUSE mount at {mountpoint} (its daemon had died)")
        except MountpointError as error:
            report.add("damaged", str(error))
    record = state.runtime(mountpoint)
    if record is None:
        return None
    if not pid_alive(record.pid):
        state.withdraw_runtime(mountpoint)
        report.add("repaired", f"removed the runtime record of dead daemon {record.pid}")
        return None
    report.add("note", f"mounted by daemon {record.pid}: its overlay is checked read-only")
    return Path(record.state_dir)


def _check_blob_cache(cache: BlobCache, report: FsckReport) -> None:
    checked = 0
    for oid in list(cache.iter_oids()):
        checked += 1
        if not cache.verify(oid) and cache.contains(oid):
            cache.remove(oid)
            report.add("repaired", f"removed damaged cached blob {oid} (it is fetched again when read)")
    report.add("ok", f"blob cache: {checked} blobs verified")


def _check_gitdir(gitdir: GitDir, report: FsckReport) -> Snapshot | None:
    """Check the gitdir; returns its HEAD tree (the overlay's base) when readable."""
    if not gitdir.exists():
        report.add("damaged", f"gitdir {gitdir.path} is missing or incomplete")
        return None
    head = gitdir.head_oid()
    if head is None:
        report.add("damaged", f"HEAD of {gitdir.path} does not resolve to a commit")
        return None
    try:
        base = Snapshot(head, gitdir.commit_tree(head), TreeCache(gitdir.read_tree))
        base.children("")
    except (KeyError, CorruptObjectError) as error:
        report.add("damaged", f"HEAD {head} of {gitdir.path} is unreadable: {error}")
        return None
    try:
        result = subprocess.run(
            [
                "git",
                "--git-dir",
                str(gitdir.path),
                "fsck",
                "--connectivity-only",
                "--no-dangling",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=_GIT_FSCK_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        report.add("note", f"git fsck of {gitdir.path} took over {_GIT_FSCK_TIMEOUT:g}s; skipped")
        return base
    if result.returncode != 0:
        problem = (result.stderr.strip() or result.stdout.strip()).splitlines()
        report.add(
            "damaged", f"git fsck of {gitdir.path} failed: {problem[0] if problem else result.returncode}"
        )
    else:
        report.add("ok", f"gitdir: HEAD {head}, connectivity intact")
    return base


def _check_overlay(overlay_dir: Path, base: Snapshot | None, live: bool, report: FsckReport) -> None:
    if not (overlay_dir / "overlay.db").exists():
        report.add("ok", f"overlay {overlay_dir}: no changes recorded")
        return
    try:
        rows, problems = inspect_database(overlay_dir, read_only=live)
    except OverlayStoreError as error:
        report.add("damaged", str(error))
        return
    for problem in problems:
        report.add("damaged", problem)
    referenced = _check_data_files(overlay_dir / "data", rows, live, report)
    misplaced = _check_parents(rows, base, report)
    if base is None:
        report.add("note", "overlay rows not checked against the base tree (HEAD unreadable)")
    report.add(
        "ok", f"overlay: {len(rows)} rows, {referenced} data files, {misplaced} rows outside a directory"
    )


def _check_data_files(data_dir: Path, rows: dict[str, OverlayRow], live: bool, report: FsckReport) -> int:
    """Every data-file row has its file; files no row names are removed (not while live)."""
    wanted = {row.data_id: path for path, row in rows.items() if row.data_id is not None}
    present = set(os.listdir(data_dir)) if data_dir.is_dir() else set()
    for data_id, path in sorted(wanted.items(), key=lambda item: item[1]):
        if data_id not in present:
            report.add("damaged", f"the content of {path!r} is lost: data file {data_id} is missing")
    unreferenced = sorted(present - wanted.keys())
    if unreferenced and live:
        report.add("note", f"{len(unreferenced)} data files not referenced (yet): left to the running daemon")
    elif unreferenced:
        for name in unreferenced:
            (data_dir / name).unlink(missing_ok=True)
        report.add("repaired", f"removed {len(unreferenced)} unreferenced data files")
    return len(wanted.keys() & present)


def _check_parents(rows: dict[str, OverlayRow], base: Snapshot | None, report: FsckReport) -> int:
    """Every row lives in a directory of the merged tree; returns how many do not."""
    known: dict[str, bool] = {"": True}

    def base_visible(path: str) -> bool:
        """No ancestor row hides the base at ``path`` (an opaque directory)."""
        ancestor = parent_of(path)
        while ancestor:
            row = rows.get(ancestor)
            if row is not None and row.opaque:
                return False
            ancestor = parent_of(ancestor)
        root = rows.get("")
        return root is None or not root.opaque

    def is_dir(path: str) -> bool:
        if path not in known:
            row = rows.get(path)
            if not is_dir(parent_of(path)):
                known[path] = False
            elif row is not None:
                known[path] = row.kind == EntryKind.DIR
            elif base is None:
                known[path] = True  # cannot tell; assume the base has it
            else:
                entry = base.entry(path) if base_visible(path) else None
                known[path] = entry is not None and entry.kind is EntryKind.DIR
        return known[path]

    misplaced = 0
    for path in sorted(rows):
        if path and not is_dir(parent_of(path)):
            misplaced += 1
            report.add("damaged", f"overlay row {path!r} is not inside a directory of the mounted tree")
    return misplaced
