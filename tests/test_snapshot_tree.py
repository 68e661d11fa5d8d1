"""Tree entries: names that are refused and hidden, duplicates, non-UTF-8 names."""

from __future__ import annotations

import hashlib

import pytest

from artifactfs.snapshot.entries import EntryKind
from artifactfs.snapshot.tree import Snapshot, TreeCache, refusal_reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (b"", "empty name"),
        (b".", "relative path component"),
        (b"..", "relative path component"),
        (b".git", "name folds to .git"),
        (b".GIT", "name folds to .git"),
        (b".Git", "name folds to .git"),
        (b".git.", "name folds to .git"),
        (b".git ", "name folds to .git"),
        (".g\u200cit".encode(), "name folds to .git"),
        (".GI\u200dT".encode(), "name folds to .git"),
        ("\ufeff.git".encode(), "name folds to .git"),
        (b"git~1", "name folds to .git"),
        (b"GIT~1", "name folds to .git"),
        (b"a/b", "slash or NUL in name"),
        (b"/", "slash or NUL in name"),
        (b"a\0b", "slash or NUL in name"),
    ],
)
def test_refused_names(name: bytes, reason: str) -> None:
    assert refusal_reason(name) == reason


@pytest.mark.parametrize(
    "name",
    [
        b"git",
        b".gitignore",
        b".gitmodules",
        b"git~2",
        b".git~1",
        b"a.git",
        b"normal.txt",
        ".gi\u00dft".encode(),
        "caf\u00e9".encode(),
        b"caf\xe9.txt",
    ],
)
def test_accepted_names(name: bytes) -> None:
    assert refusal_reason(name) is None


@pytest.mark.parametrize("name", [b"digit-caf\xe9.txt", b"gitter-\xff"])
def test_non_utf8_names_are_accepted(name: bytes) -> None:
    assert refusal_reason(name) is None


def _tree(*entries: tuple[bytes, bytes, str]) -> bytes:
    return b"".join(mode + b" " + name + b"\0" + bytes.fromhex(oid) for mode, name, oid in entries)


def _fake_oid(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


def test_snapshot_hides_dangerous_and_duplicate_entries() -> None:
    blob, other, link, sub_oid, root_oid = (_fake_oid(x) for x in ("blob", "other", "link", "sub", "root"))
    trees = {
        sub_oid: _tree(
            (b"100644", b"ok.txt", blob),
            (b"100644", b".GIT", blob),
            (b"40000", b"git~1", sub_oid),
            (b"100644", b"ok.txt", other),
        ),
        root_oid: _tree(
            (b"100644", b"..", blob),
            (b"100644", b".", blob),
            (b"40000", b".git", sub_oid),
            (b"100644", b".git.", blob),
            (b"100644", b".git ", blob),
            (b"100644", ".g\u200cit".encode(), blob),
            (b"100644", b"a/b", blob),
            (b"100644", b"README", blob),
            (b"100755", b"run.sh", blob),
            (b"120000", b"link", link),
            (b"100600", b"odd-mode", blob),
            (b"100644", b"README", other),
            (b"40000", b"sub", sub_oid),
        ),
    }
    requested: list[str] = []

    def source(oid: str) -> bytes:
        requested.append(oid)
        return trees[oid]

    cache = TreeCache(source)
    snapshot = Snapshot(_fake_oid("commit"), root_oid, cache)
    root = snapshot.children("")
    assert root is not None
    assert sorted(root) == ["README", "link", "run.sh", "sub"]
    assert root["README"].oid == blob  # the first of duplicate entries is kept
    assert root["run.sh"].mode == 0o100755 and root["link"].kind is EntryKind.SYMLINK
    assert snapshot.children("sub") is not None and sorted(snapshot.children("sub") or {}) == ["ok.txt"]
    kept = snapshot.entry("sub/ok.txt")
    assert kept is not None and kept.oid == blob
    for hidden_path in ("..", ".git", ".git/ok.txt", "sub/.GIT", "sub/git~1", "odd-mode"):
        assert snapshot.entry(hidden_path) is None
    assert sorted(path for path, _ in snapshot.walk()) == ["README", "link", "run.sh", "sub", "sub/ok.txt"]
    hidden = {(entry.path, entry.reason) for entry in snapshot.hidden()}
    assert hidden == {
        ("..", "relative path component"),
        (".", "relative path component"),
        (".git", "name folds to .git"),
        (".git.", "name folds to .git"),
        (".git ", "name folds to .git"),
        (".g\u200cit", "name folds to .git"),
        ("a/b", "slash or NUL in name"),
        ("odd-mode", "unsupported mode 100600"),
        ("README", "duplicate entry"),
        ("sub/.GIT", "name folds to .git"),
        ("sub/git~1", "name folds to .git"),
        ("sub/ok.txt", "duplicate entry"),
    }
    # Each tree object is parsed once however often it is visited.
    assert sorted(requested) == sorted([root_oid, sub_oid])
