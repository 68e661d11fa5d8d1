"""Index encoding, checked by real git reading it back."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from artifactfs.testing import git_env
from artifactfs.worktree.index import IndexRecord, encode_index, write_index


def _git(repo: Path, *args: str, input: bytes | None = None) -> str:
    identity = {
        f"GIT_{who}_{what}": value
        for who in ("AUTHOR", "COMMITTER")
        for what, value in (("NAME", "T"), ("EMAIL", "t@example.com"))
    }
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=input,
        capture_output=True,
        env={**git_env(), **identity},
        check=True,
    )
    return result.stdout.decode("utf-8", "surrogateescape")


MTIME_NS = 1_000_000_000 * 1_000_000_000 + 123_456_789


def test_encoded_index_is_read_back_by_git(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _git(tmp_path, "init", "-q", str(repo))
    files: dict[str, tuple[int, bytes]] = {}
    # Path lengths 1..16 give every possible amount of NUL padding (1 to 8 bytes).
    for length in range(1, 17):
        files["p" * length] = (0o100644, b"x" * length)
    files["dir/sub/tool.sh"] = (0o100755, b"#!/bin/sh\n")
    files["caf\u00e9.txt"] = (0o100644, "caf\u00e9\n".encode())
    files["dir/a-link"] = (0o120000, b"../p")
    records = []
    for path, (mode, data) in files.items():
        oid = _git(repo, "hash-object", "-w", "--stdin", input=data).strip()
        records.append(IndexRecord(path.encode(), mode, oid, len(data)))
    gitlink = "0123456789abcdef0123456789abcdef01234567"
    records.append(IndexRecord(b"vendor/sub", 0o160000, gitlink, 0))
    write_index(repo / ".git", reversed(records), MTIME_NS)  # unsorted input
    assert not (repo / ".git" / "index.lock").exists()

    staged = {}
    for line in _git(repo, "ls-files", "-s", "-z").split("\0"):
        if line:
            meta, path = line.split("\t", 1)
            mode_text, oid, stage = meta.split()
            staged[path] = (int(mode_text, 8), oid, stage)
    expected = {record.path.decode(): (record.mode, record.oid, "0") for record in records}
    assert staged == expected
    assert list(staged) == sorted(staged, key=lambda p: p.encode())

    debug = _git(repo, "ls-files", "--debug", "p" * 5)
    assert "ctime: 1000000000:123456789" in debug and "mtime: 1000000000:123456789" in debug
    assert "size: 5\t" in debug or "size: 5\n" in debug
    # git fsck verifies the index checksum and that every entry names a valid object.
    fsck = subprocess.run(
        ["git", "-C", str(repo), "fsck", "--no-dangling", "--cache"],
        capture_output=True,
        env=git_env(),
        check=False,
    )
    assert fsck.returncode == 0, fsck.stderr
    index = repo / ".git" / "index"
    damaged = bytearray(index.read_bytes())
    damaged[-1] ^= 0xFF
    index.write_bytes(bytes(damaged))
    fsck = subprocess.run(
        ["git", "-C", str(repo), "fsck", "--no-dangling", "--cache"],
        capture_output=True,
        env=git_env(),
        check=False,
    )
    assert fsck.returncode != 0 and b"index" in fsck.stderr


def test_encoded_index_stat_data_makes_status_clean_without_reading(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "config", "core.checkStat", "minimal")
    _git(repo, "config", "core.trustctime", "false")
    contents = {"a.txt": b"alpha\n", "src/b.py": b"print('b')\n", "same-size.txt": b"12345\n"}
    records = []
    for path, data in contents.items():
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.utime(target, ns=(MTIME_NS, MTIME_NS))
        oid = _git(repo, "hash-object", "-w", path).strip()
        records.append(IndexRecord(path.encode(), 0o100644, oid, len(data)))
    (repo / ".git" / "index").write_bytes(encode_index(records, MTIME_NS))
    tree = _git(repo, "write-tree").strip()  # git accepts the index as the source of a commit
    commit = _git(repo, "commit-tree", "-m", "base", tree, input=b"").strip()
    _git(repo, "update-ref", "HEAD", commit)
    assert sorted(_git(repo, "ls-tree", "-r", "--name-only", "HEAD").split()) == sorted(contents)
    # Stat data matches: nothing is reported as changed, even by plumbing that never re-reads content.
    assert _git(repo, "diff-files", "--name-only") == ""
    assert _git(repo, "status", "--porcelain") == ""
    # A size change is seen from stat data alone...
    (repo / "a.txt").write_bytes(b"alpha, longer\n")
    os.utime(repo / "a.txt", ns=(MTIME_NS, MTIME_NS))
    assert _git(repo, "diff-files", "--name-only") == "a.txt\n"
    # ...and an mtime change makes git look at the content (which is unchanged here).
    os.utime(repo / "src/b.py", ns=(MTIME_NS + 5_000_000_000, MTIME_NS + 5_000_000_000))
    assert _git(repo, "status", "--porcelain") == " M a.txt\n"


def test_encoded_index_layout() -> None:
    oid = hashlib.sha1(b"blob 0\0").hexdigest()
    data = encode_index([IndexRecord(b"abc", 0o100644, oid, 0)], 5_000_000_007)
    assert data[:12] == b"DIRC" + (2).to_bytes(4, "big") + (1).to_bytes(4, "big")
    entry = data[12:-20]
    assert len(entry) % 8 == 0 and entry.endswith(b"abc\0\0\0\0\0\0\0")  # 62 + 3 = 65 -> 72
    assert entry[:8] == (5).to_bytes(4, "big") + (7).to_bytes(4, "big")
    assert data[-20:] == hashlib.sha1(data[:-20]).digest()
    long_path = b"d/" * 3000
    long_entry = encode_index([IndexRecord(long_path, 0o100644, oid, 0)], 0)[12:-20]
    assert int.from_bytes(long_entry[60:62], "big") == 0x0FFF  # name length saturates
