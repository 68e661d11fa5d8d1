"""Hostile repositories: trees git itself would refuse to check out, served over HTTP.

Trees are written byte by byte with ``git hash-object -t tree --literally``
so nothing validates them on the way in. The mount must hide what must not be
materialised (and log it), serve symlinks as text only, execute nothing from
the repository, write nothing outside its state root and mountpoint, and keep
memory bounded on a huge blob.

``ARTIFACTFS_HOSTILE_BIG_MIB`` (default 256) sizes the big blob; run with 1024
by hand for the 1 GiB figure.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import robustness

from artifactfs.objects import object_hasher
from artifactfs.state import StateRoot
from artifactfs.testing import git, make_bare_repo
from artifactfs.testing.mounts import artifactfs_command, force_unmount, is_mounted, run_cli

BIG_MIB = int(os.environ.get("ARTIFACTFS_HOSTILE_BIG_MIB", "256"))
WIDE_ENTRIES = 100_000

HIDDEN_NAMES: dict[bytes, str] = {
    b"..": "relative path component",
    b".": "relative path component",
    b".git": "name folds to .git",
    b".GIT": "name folds to .git",
    b".git.": "name folds to .git",
    b".git ": "name folds to .git",
    ".g\u200cit".encode(): "name folds to .git",
    b"git~1": "name folds to .git",
    b"GIT~1": "name folds to .git",
    b"a/b": "slash or NUL in name",
    b"../../escape": "slash or NUL in name",
}
# An empty name cannot be served at all: stock `git pack-objects` dies with
# "empty filename in tree entry". It is covered at the tree-parser level below.


def tree_entry(mode: str, name: bytes, oid: str) -> bytes:
    return mode.encode() + b" " + name + b"\0" + bytes.fromhex(oid)


def write_tree(repo: Path, entries: list[bytes]) -> str:
    return (
        git(repo, "hash-object", "-t", "tree", "-w", "--literally", "--stdin", input=b"".join(entries))
        .decode()
        .strip()
    )


def write_blob(repo: Path, data: bytes) -> str:
    return git(repo, "hash-object", "-w", "--stdin", input=data).decode().strip()


def big_blob(repo: Path, size: int) -> str:
    """A blob of ``size`` zero bytes, streamed into the object store (no big buffer here)."""
    process = subprocess.Popen(
        ["git", f"--git-dir={repo}", "hash-object", "-w", "--stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    zeros = bytes(8 << 20)
    remaining = size
    while remaining:
        piece = zeros[: min(remaining, len(zeros))]
        process.stdin.write(piece)
        remaining -= len(piece)
    process.stdin.close()
    oid = process.stdout.read().decode().strip()
    assert process.wait() == 0
    return oid


def build_hostile_repo(path: Path, payload: Path) -> dict[str, object]:
    """The served repository; returns what the test needs to know about it."""
    make_bare_repo(path, {"README.md": b"# hostile\n"})
    blob = write_blob(path, b"x\n")
    fsmonitor_config = f"[core]\n\tfsmonitor = {payload}\n\thooksPath = hooks\n".encode()
    config_blob = write_blob(path, fsmonitor_config)
    hook_blob = write_blob(path, f"#!/bin/sh\n{payload}\n".encode())
    hooks_tree = write_tree(
        path,
        [
            tree_entry("100755", name, hook_blob)
            for name in (b"post-checkout", b"post-index-change", b"pre-commit", b"fsmonitor-watchman")
        ],
    )
    fake_gitdir = write_tree(
        path,
        [
            tree_entry("100644", b"HEAD", write_blob(path, b"ref: refs/heads/main\n")),
            tree_entry("100644", b"config", config_blob),
            tree_entry("40000", b"hooks", hooks_tree),
        ],
    )
    entries = []
    for name in HIDDEN_NAMES:
        if name in (b".git", b".GIT", b"git~1"):
            entries.append(tree_entry("40000", name, fake_gitdir))
        else:
            entries.append(tree_entry("100644", name, blob))
    # Duplicate entries: the first is kept, the second hidden.
    entries.append(tree_entry("100644", b"dup", write_blob(path, b"first\n")))
    entries.append(tree_entry("100644", b"dup", write_blob(path, b"second\n")))
    entries.append(tree_entry("100600", b"oddmode", blob))
    # Symlinks pointing outside the tree, and a traversal submodule path.
    entries.append(tree_entry("120000", b"up", write_blob(path, b"../../../../etc/passwd")))
    entries.append(tree_entry("120000", b"abs", write_blob(path, b"/etc/shadow")))
    gitmodules = f'[submodule "evil"]\n\tpath = ../../escape\n\turl = {payload}\n'.encode()
    entries.append(tree_entry("100644", b".gitmodules", write_blob(path, gitmodules)))
    entries.append(tree_entry("160000", b"evil", "0123456789abcdef0123456789abcdef01234567"))
    entries.append(
        tree_entry("100644", b".gitattributes", write_blob(path, b"* filter=pwn diff=pwn merge=pwn\n"))
    )
    entries.append(tree_entry("40000", b"hooks", hooks_tree))
    entries.append(tree_entry("100644", b"README.md", write_blob(path, b"# hostile\n")))
    # 4 KiB of path: 21 nested directories with 200-byte names, then a file.
    deep = write_tree(path, [tree_entry("100644", b"bottom.txt", write_blob(path, b"deep down\n"))])
    deep_names = [(b"%02d" % level) + b"d" * 198 for level in range(21)]
    for name in reversed(deep_names):
        deep = write_tree(path, [tree_entry("40000", name, deep)])
    entries.append(tree_entry("40000", b"deep", deep))
    # A directory of 100k entries (all the same empty blob).
    empty = write_blob(path, b"")
    wide = write_tree(path, [tree_entry("100644", b"f%06d" % index, empty) for index in range(WIDE_ENTRIES)])
    entries.append(tree_entry("40000", b"wide", wide))
    # A subdirectory with hidden entries of its own.
    sub = write_tree(
        path,
        [
            tree_entry("100644", b"ok.txt", blob),
            tree_entry("100644", b"ok.txt", blob),
            tree_entry("40000", b".Git", fake_gitdir),
        ],
    )
    entries.append(tree_entry("40000", b"sub", sub))
    big_size = BIG_MIB << 20
    big = big_blob(path, big_size)
    entries.append(tree_entry("100644", b"big.bin", big))
    root = write_tree(path, entries)
    commit = (
        git(
            path,
            "-c",
            "user.name=Mallory",
            "-c",
            "user.email=m@example.com",
            "commit-tree",
            root,
            "-m",
            "hostile",
            input=b"",
        )
        .decode()
        .strip()
    )
    git(path, "update-ref", "refs/heads/main", commit)
    return {"big_oid": big, "big_size": big_size, "deep_names": deep_names}


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def names_below(root: Path, skip: set[Path]) -> set[str]:
    found: set[str] = set()
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(directory, d) not in skip]
        found.update(str(Path(directory, name).relative_to(root)) for name in dirnames + filenames)
    return found


def test_hostile_tree_is_hidden_inert_and_bounded(git_root, git_server, tmp_path, state_root, fuse):
    marker = tmp_path / "PWNED"
    payload = tmp_path / "payload.sh"
    payload.write_text(f"#!/bin/sh\ntouch {marker}\n")
    payload.chmod(0o755)
    started = time.monotonic()
    info = build_hostile_repo(git_root / "hostile.git", payload)
    build_seconds = time.monotonic() - started
    home = tmp_path / "home"
    cwd = tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    before = names_below(tmp_path, {state_root, mountpoint, git_root})
    environment = {
        **os.environ,
        "HOME": str(home),
        "ARTIFACTFS_ROOT": str(state_root),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
    }
    environment.pop("GIT_DIR", None)
    mounted = subprocess.run(
        artifactfs_command("mount", "--hydrate", "none", git_server.url("hostile"), str(mountpoint)),
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert mounted.returncode == 0, mounted.stderr
        status = run_cli("status", "--json", str(mountpoint), root=state_root).stdout
        import json

        status_data = json.loads(status)
        pid = status_data["pid"]
        gitdir = Path(status_data["gitdir"])

        # Hidden entries are absent, listed in the daemon log, and the rest works.
        listing = set(os.listdir(mountpoint))
        for name in HIDDEN_NAMES:
            text = name.decode("utf-8", "surrogateescape")
            if text in (".", "..", ".git"):
                continue  # "." and ".." are the kernel's; ".git" is checked below to be our gitfile
            assert text not in listing, f"{name!r} must be hidden"
            robustness.add("hostile_cases")
        assert (mountpoint / ".git").read_text() == f"gitdir: {gitdir}\n"  # our gitfile, not the repo's .git
        assert not (mountpoint / ".git").is_dir()
        assert {
            ".git",
            "README.md",
            "dup",
            "up",
            "abs",
            ".gitmodules",
            "evil",
            ".gitattributes",
            "hooks",
            "deep",
            "wide",
            "sub",
            "big.bin",
        } <= listing
        assert "oddmode" not in listing
        assert (mountpoint / "dup").read_bytes() == b"first\n"
        assert sorted(os.listdir(mountpoint / "sub")) == ["ok.txt"]
        assert (mountpoint / "README.md").read_bytes() == b"# hostile\n"
        assert not gitdir.is_relative_to(mountpoint) and gitdir.is_relative_to(state_root)
        log_text = StateRoot(state_root).mount_states()[0].log_file.read_text(errors="replace")
        for name, reason in HIDDEN_NAMES.items():
            assert f"hiding tree entry {name.decode('utf-8', 'surrogateescape')!r}: {reason}" in log_text, (
                name
            )
        for logged in (
            "'dup': duplicate entry",
            "'oddmode': unsupported mode 100600",
            "'sub/ok.txt': duplicate entry",
            "'sub/.Git': name folds to .git",
        ):
            assert f"hiding tree entry {logged}" in log_text, logged
            robustness.add("hostile_cases")

        # Symlinks are served as their text; nothing is followed on the daemon's side.
        for link, target in (("up", "../../../../etc/passwd"), ("abs", "/etc/shadow")):
            info_link = os.lstat(mountpoint / link)
            assert stat.S_ISLNK(info_link.st_mode) and info_link.st_size == len(target)
            assert os.readlink(mountpoint / link) == target
            with pytest.raises(OSError):
                os.open(mountpoint / link, os.O_RDONLY | os.O_NOFOLLOW)
            robustness.add("hostile_cases")
        assert (
            os.listdir(mountpoint / "evil") == []
        )  # the gitlink is an empty directory, wherever .gitmodules says
        robustness.add("hostile_cases")

        # 4 KiB of nested path, walked with dirfds (longer than PATH_MAX).
        fd = os.open(mountpoint / "deep", os.O_RDONLY | os.O_DIRECTORY)
        depth_bytes = len(str(mountpoint / "deep"))
        for deep_name in info["deep_names"]:  # type: ignore[attr-defined]
            next_fd = os.open(deep_name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
            depth_bytes += 1 + len(deep_name)
        leaf = os.open("bottom.txt", os.O_RDONLY, dir_fd=fd)
        assert os.read(leaf, 100) == b"deep down\n"
        os.close(leaf)
        os.close(fd)
        assert depth_bytes > 4096
        robustness.add("hostile_cases")

        # 100k entries in one directory.
        started = time.monotonic()
        with os.scandir(mountpoint / "wide") as entries:
            wide = [entry.name for entry in entries]
        wide_seconds = time.monotonic() - started
        assert len(wide) == WIDE_ENTRIES and wide[0] == "f000000"
        assert os.stat(mountpoint / "wide/f099999").st_size == 0
        robustness.add("hostile_cases")

        # git works in the mount, and nothing from the repository runs.
        git_env = {**environment, "GIT_CONFIG_NOSYSTEM": "1"}
        for arguments in (
            ["status", "--porcelain"],
            ["diff"],
            ["log", "--oneline"],
            ["ls-files", "sub"],
            ["diff", "HEAD", "--stat", "--", "README.md"],
        ):
            result = subprocess.run(
                ["git", *arguments], cwd=mountpoint, env=git_env, capture_output=True, timeout=120
            )
            assert result.returncode == 0, (arguments, result.stderr)
        assert (mountpoint / ".gitattributes").read_bytes().startswith(b"* filter=pwn")
        assert (mountpoint / "hooks/post-checkout").read_bytes().endswith(f"{payload}\n".encode())
        config = subprocess.run(
            ["git", "config", "--get", "core.hooksPath"],
            cwd=mountpoint,
            env=git_env,
            capture_output=True,
            text=True,
        )
        assert config.stdout == "", "the repository's config must never become the mount's config"

        # The big blob: streamed, verified, with bounded daemon memory.
        size = info["big_size"]
        assert os.stat(mountpoint / "big.bin").st_size == size
        started = time.monotonic()
        digest = object_hasher("blob", size)
        with open(mountpoint / "big.bin", "rb") as stream:
            while chunk := stream.read(8 << 20):
                digest.update(chunk)
        big_seconds = time.monotonic() - started
        assert digest.hexdigest() == info["big_oid"]
        hwm_mib = vm_hwm_kib(pid) / 1024
        print(
            f"hostile: repo built in {build_seconds:.1f}s; big blob {BIG_MIB} MiB hydrated+read in "
            f"{big_seconds:.1f}s; daemon VmHWM {hwm_mib:.0f} MiB; 100k-entry listing {wide_seconds:.2f}s"
        )
        assert hwm_mib < 300, f"daemon peak RSS {hwm_mib:.0f} MiB for a {BIG_MIB} MiB blob"
        robustness.add("hostile_cases")

        assert not marker.exists(), "something from the repository was executed"
        assert is_mounted(mountpoint) and run_cli("status", str(mountpoint), root=state_root).returncode == 0
    finally:
        run_cli("unmount", str(mountpoint), root=state_root, check=False)
        force_unmount(mountpoint)
    # Nothing was written outside the state root and the mountpoint.
    assert not marker.exists()
    assert os.listdir(home) == [], os.listdir(home)
    assert os.listdir(cwd) == [], os.listdir(cwd)
    assert names_below(tmp_path, {state_root, mountpoint, git_root}) == before
    for escaped in ("passwd", "shadow", "escape", "evil"):
        assert not (tmp_path / escaped).exists() and not (tmp_path.parent / escaped).exists()


def test_tree_parser_hides_what_no_stock_server_would_send():
    """Entries stock git refuses to pack (empty names) still meet the same parser: hidden, recorded."""
    from artifactfs.snapshot.tree import Snapshot, TreeCache

    oid = "e69de29bb2d1d6484b8b3bf8d3b0f3bbf3e3b3e3"
    raw = b"".join(
        tree_entry("100644", name, oid) for name in (b"", b"ok", b".git", b"ok", b"a/b", b"..", b"git~1")
    )
    trees = TreeCache(lambda tree_oid: raw)
    snapshot = Snapshot("0" * 40, "1" * 40, trees)
    assert list(snapshot.children("") or {}) == ["ok"]
    reasons = {entry.path: entry.reason for entry in snapshot.hidden()}
    assert reasons == {
        "": "empty name",
        ".git": "name folds to .git",
        "ok": "duplicate entry",
        "a/b": "slash or NUL in name",
        "..": "relative path component",
        "git~1": "name folds to .git",
    }
    robustness.add("hostile_cases", len(reasons))
