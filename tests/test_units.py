"""Pure-logic units: priority classes, the hydration queue, tree-entry refusal,
index encoding (checked by real git) and credential redaction."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from artifactfs.errors import UsageError
from artifactfs.hydrator.priority import (
    BINARY_SIZE_THRESHOLD,
    Classifier,
    PriorityClass,
    PriorityRule,
    builtin_class,
    load_rules,
)
from artifactfs.hydrator.queue import BOOST, DEMAND, HydrationQueue, level_of
from artifactfs.redaction import redact
from artifactfs.snapshot.entries import EntryKind
from artifactfs.snapshot.tree import Snapshot, TreeCache, refusal_reason
from artifactfs.testing import git_env
from artifactfs.worktree.index import IndexRecord, encode_index, write_index

M, C, S, D, T, B = (
    PriorityClass.MANIFEST,
    PriorityClass.CONFIG,
    PriorityClass.SOURCE,
    PriorityClass.DOCS,
    PriorityClass.TEXT,
    PriorityClass.BINARY,
)

# --------------------------------------------------------------------------- priority


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("package.json", M),
        ("web/package.json", M),
        ("go.mod", M),
        ("svc/go.sum", M),
        ("crates/x/Cargo.toml", M),
        ("CARGO.LOCK", M),
        ("pyproject.toml", M),
        ("requirements-dev.txt", M),
        ("tsconfig.build.json", M),
        ("app/demo.gemspec", M),
        ("CMakeLists.txt", M),
        ("src/App.csproj", M),
        (".gitignore", C),
        ("sub/.gitattributes", C),
        ("Dockerfile", C),
        ("Dockerfile.dev", C),
        ("api.dockerfile", C),
        ("Makefile", C),
        ("rules.mk", C),
        ("docker-compose.prod.yml", C),
        (".github/workflows/ci.yml", C),
        ("a/.vscode/settings.json", C),
        (".eslintrc.json", C),
        ("src/main.py", S),
        ("web/index.TS", S),
        ("lib/x.rs", S),
        ("conf/settings.yaml", S),
        ("README.md", D),
        ("docs/guide.rst", D),
        ("notes.txt", D),
        ("README", D),
        ("LICENSE", D),
        ("CHANGELOG.old", D),
        (".authors", D),
        ("NOTES", T),
        ("data.csv", T),
        (".bashrc", T),
        ("Procfile", T),
        ("weird.unknownext", T),
        ("img/logo.PNG", B),
        ("dist/a.tar.gz", B),
        ("lib/x.so", B),
        ("model.safetensors", B),
    ],
)
def test_builtin_class_table(path: str, expected: PriorityClass) -> None:
    assert builtin_class(path) is expected
    assert Classifier().classify(path) is expected


def test_name_tables_win_over_directory_and_extension() -> None:
    # A manifest name under a config directory is still a manifest; a .json
    # that is not a known manifest is source; a .txt manifest glob beats docs.
    assert builtin_class(".github/package.json") is M
    assert builtin_class("src/data.json") is S
    assert builtin_class("requirements.txt") is M and builtin_class("requirement.txt") is D


def test_size_threshold_makes_large_blobs_binary() -> None:
    classifier = Classifier()
    assert classifier.classify("go.mod", BINARY_SIZE_THRESHOLD) is M
    assert classifier.classify("go.mod", BINARY_SIZE_THRESHOLD + 1) is B
    assert classifier.classify("src/big.py", BINARY_SIZE_THRESHOLD + 1) is B
    assert classifier.classify("src/big.py", None) is S
    # A user override wins even over the size threshold.
    overridden = Classifier((PriorityRule.parse("source=*.py"),))
    assert overridden.classify("src/big.py", 10 * BINARY_SIZE_THRESHOLD) is S


def test_override_without_slash_matches_the_file_name_anywhere() -> None:
    classifier = Classifier((PriorityRule.parse("binary=*.py"),))
    assert classifier.classify("main.py") is B
    assert classifier.classify("deep/down/tool.py") is B
    assert classifier.classify("deep/down/tool.pyi") is S  # not matched: built-in table
    assert not PriorityRule.parse("binary=*.py").matches("py/README.md")


def test_override_with_slash_matches_the_whole_path() -> None:
    vendor = PriorityRule.parse("binary=vendor/**")
    assert vendor.matches("vendor/a.go") and vendor.matches("vendor/x/y/z.go")
    assert not vendor.matches("src/vendor/a.go")
    nested = PriorityRule.parse("manifest=src/**/BUILD")
    assert nested.matches("src/BUILD")  # "**/" also matches no directory at all
    assert nested.matches("src/a/b/BUILD")
    assert not nested.matches("BUILD") and not nested.matches("src/BUILD.bak")
    docs = PriorityRule.parse("docs=docs/*.py")
    assert docs.matches("docs/conf.py") and not docs.matches("other/docs/conf.py")
    classifier = Classifier((nested, vendor))
    assert classifier.classify("src/x/BUILD") is M
    assert classifier.classify("BUILD") is T


def test_first_matching_override_wins() -> None:
    rules = (PriorityRule.parse("docs=special.py"), PriorityRule.parse("binary=*.py"))
    classifier = Classifier(rules)
    assert classifier.classify("a/special.py") is D
    assert classifier.classify("a/other.py") is B


def test_rule_parsing_and_errors() -> None:
    assert PriorityRule.parse(" Binary = *.psd ") == PriorityRule("*.psd", B)
    assert PriorityRule.parse("manifest=a=b") == PriorityRule("a=b", M)
    for text in ("binary", "binary=", "=*.py", "bogus=*.py", ""):
        with pytest.raises(UsageError):
            PriorityRule.parse(text)
    with pytest.raises(UsageError, match="bogus"):
        PriorityClass.from_label("bogus")
    assert PriorityClass.from_label("DOCS") is D and D.label == "docs"


def test_load_rules_from_flags_then_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[mount]\nother = 1\n\n[priority]\nmanifest = ["BUILD", "*.bzl"]\nbinary = ["vendor/**"]\n'
    )
    rules = load_rules(config, ["docs=*.py"])
    assert rules == (
        PriorityRule("*.py", D),
        PriorityRule("BUILD", M),
        PriorityRule("*.bzl", M),
        PriorityRule("vendor/**", B),
    )
    classifier = Classifier(rules)
    assert classifier.classify("tools/defs.bzl") is M
    assert classifier.classify("vendor/lib/x.c") is B
    assert classifier.classify("vendor/lib/x.py") is D  # the flag comes first


def test_load_rules_without_config(tmp_path: Path) -> None:
    assert load_rules(None, []) == ()
    assert load_rules(tmp_path / "absent.toml", ["binary=*.py"]) == (PriorityRule("*.py", B),)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert load_rules(empty, []) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[priority\n", "cannot read config file"),
        ("priority = 3\n", "must be a table"),
        ('[priority]\nbinary = "*.png"\n', "priority.binary must be a list"),
        ('[priority]\nbinary = ["*.png", 3]\n', "priority.binary must be a list"),
        ('[priority]\nhuge = ["*.png"]\n', "unknown priority class 'huge'"),
    ],
)
def test_load_rules_config_errors(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_rules(config, [])


# --------------------------------------------------------------------------- queue


def _drain(queue: HydrationQueue, max_level: int = level_of(B)) -> list[tuple[str, int]]:
    return queue.pop_batch(max_level, 10_000, 1 << 40, {}, 1)


def test_queue_orders_by_level_then_arrival() -> None:
    queue = HydrationQueue()
    for oid, priority_class in [("b1", B), ("s1", S), ("m1", M), ("s2", S), ("c1", C), ("m2", M)]:
        assert queue.push(oid, level_of(priority_class))
    queue.push("d", DEMAND)
    queue.push("x", BOOST)
    assert len(queue) == 8
    assert queue.best_level() == DEMAND
    assert [oid for oid, _ in _drain(queue)] == ["d", "x", "m1", "m2", "c1", "s1", "s2", "b1"]
    assert len(queue) == 0 and queue.best_level() is None


def test_queue_levels_only_rise_and_stale_entries_are_skipped() -> None:
    queue = HydrationQueue()
    queue.push("a", level_of(B))
    queue.push("b", level_of(S))
    assert queue.push("a", BOOST) is True
    assert queue.push("a", level_of(T)) is False  # never lowered
    assert queue.push("b", level_of(S)) is False  # same level: no change
    assert queue.push("a", DEMAND) is True
    assert len(queue) == 2 and "a" in queue
    assert sorted(queue.pending_levels()) == [DEMAND, level_of(S)]
    # Three heap entries for "a": it comes out once, at its best level.
    assert _drain(queue) == [("a", DEMAND), ("b", level_of(S))]
    assert _drain(queue) == []


def test_queue_discard_is_lazy_but_exact() -> None:
    queue = HydrationQueue()
    for oid in ("a", "b", "c"):
        queue.push(oid, level_of(S))
    queue.discard("a")
    queue.discard("never-queued")
    assert "a" not in queue and len(queue) == 2
    assert queue.best_level() == level_of(S)
    assert [oid for oid, _ in _drain(queue)] == ["b", "c"]
    # A discarded blob can be queued again, and comes out once.
    queue.push("a", level_of(M))
    assert _drain(queue) == [("a", level_of(M))]


def test_queue_batch_respects_max_level() -> None:
    queue = HydrationQueue()
    queue.push("bg", level_of(M))
    queue.push("boosted", BOOST)
    queue.push("demanded", DEMAND)
    assert queue.pop_batch(BOOST, 100, 1 << 30, {}, 1) == [("demanded", DEMAND), ("boosted", BOOST)]
    assert queue.pop_batch(BOOST, 100, 1 << 30, {}, 1) == []
    assert queue.best_level() == level_of(M) and "bg" in queue


def test_queue_batch_count_and_byte_limits() -> None:
    queue = HydrationQueue()
    for index in range(10):
        queue.push(f"o{index}", level_of(S))
    assert [oid for oid, _ in queue.pop_batch(level_of(B), 3, 1 << 30, {}, 1)] == ["o0", "o1", "o2"]
    sizes = {"o3": 40, "o4": 40, "o5": 40, "o6": 500}
    # 40 + 40 fits in 100, a third 40 would not.
    assert [oid for oid, _ in queue.pop_batch(level_of(B), 100, 100, sizes, 1)] == ["o3", "o4"]
    assert [oid for oid, _ in queue.pop_batch(level_of(B), 100, 100, sizes, 1)] == ["o5"]
    # An oversized blob still goes, alone, so the queue never wedges.
    assert [oid for oid, _ in queue.pop_batch(level_of(B), 100, 100, sizes, 1)] == ["o6"]
    # Unknown sizes count as the guess.
    assert [oid for oid, _ in queue.pop_batch(level_of(B), 100, 100, {}, 30)] == ["o7", "o8", "o9"]
    assert len(queue) == 0


# --------------------------------------------------------------------------- snapshot.tree


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


# --------------------------------------------------------------------------- worktree.index


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


# --------------------------------------------------------------------------- redaction.redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://alice:s3cret@example.com/r.git", "https://alice@example.com/r.git"),
        ("https://:s3cret@example.com/r.git", "https://example.com/r.git"),
        ("http://tok:x-oauth@host:8080/a", "http://tok@host:8080/a"),
        (
            "fetch https://u:p1@a.com/x and https://v:p2@b.com/y failed",
            "fetch https://u@a.com/x and https://v@b.com/y failed",
        ),
        ("https://bob@example.com/r.git", "https://bob@example.com/r.git"),
        ("Authorization: Bearer abc.def", "Authorization: <redacted>"),
        ("proxy-authorization=Basic Zm9vOmJhcg==\nnext", "proxy-authorization=<redacted>\nnext"),
        (
            "protocol=https\nhost=x\nusername=a\npassword=hunter2\n",
            "protocol=https\nhost=x\nusername=a\npassword=<redacted>\n",
        ),
        ("no secrets here: https://example.com/r.git", "no secrets here: https://example.com/r.git"),
        ("", ""),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_never_leaks_the_password() -> None:
    for password in ("p@ss", "a:b", "x%40y", "p/w#?"[:1] + "ss"):
        text = f"error talking to https://user:{password}@host/repo.git: refused"
        assert password not in redact(text).replace("user@host", "")
