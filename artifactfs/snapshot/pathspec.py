"""Which files of a tree a ``prefetch`` pathspec names: paths, directories and globs."""

from __future__ import annotations

import fnmatch

from artifactfs.errors import ArtifactFSError
from artifactfs.snapshot.entries import EntryKind
from artifactfs.snapshot.tree import Snapshot


def matching_files(snapshot: Snapshot, pathspecs: list[str]) -> list[tuple[str, str]]:
    """(path, blob id) of the files and symlinks under or matching ``pathspecs`` (an empty spec matches all).

    A pathspec that matches no file is an error (as in ``git add``), so a
    typo is not mistaken for blobs that are all local already.
    """
    cleaned = [spec.strip("/") for spec in pathspecs]
    files: list[tuple[str, str]] = []
    unmatched = set(cleaned)
    for path, entry in snapshot.walk():
        if entry.kind not in (EntryKind.FILE, EntryKind.SYMLINK):
            continue
        for spec in cleaned:
            if not spec or path == spec or path.startswith(spec + "/") or fnmatch.fnmatchcase(path, spec):
                files.append((path, entry.oid))
                unmatched.discard(spec)
    if unmatched:
        raise ArtifactFSError(
            "no file in the mount matches " + ", ".join(repr(spec) for spec in sorted(unmatched))
        )
    return files
