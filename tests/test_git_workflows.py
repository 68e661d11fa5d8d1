"""Stock git in a real mount: edit, commit, push, branch, stash, merge, rebase.

Every test drives the real git CLI inside a real FUSE mount of a repository
served by ``git http-backend`` with receive-pack enabled.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from artifactfs.testing import FileSpec
from artifactfs.testing.mounts import MountedTree, run_cli
from artifactfs.testing.repos import served_tree
from artifactfs.testing.waiting import wait_for_exit

BASE: dict[str, bytes | FileSpec] = {
    "README.md": b"# project\n\nintro\n",
    "src/app.py": b"print('app')\n",
    "src/lib/util.py": b"def util():\n    return 1\n",
    "src/lib/more.py": b"VALUE = 2\n",
    "docs/guide.md": b"guide\n",
    "scripts/run.sh": FileSpec(b"#!/bin/sh\necho run\n", executable=True),
    "link": FileSpec(symlink_target="README.md"),
}


def git_lines(tree: MountedTree, *arguments: str) -> list[str]:
    return tree.git(*arguments).stdout.splitlines()


def wait_for_head(tree: MountedTree, commit: str) -> None:
    """Wait until the daemon has published ``commit`` as the mount's base."""
    tree.wait_for(lambda status: status["head"] == commit, timeout=10)


@pytest.fixture
def project(make_repo, git_server, mounts) -> tuple[MountedTree, Path]:
    repo, _ = make_repo("project", BASE, extra_commits=3)
    tree = mounts(git_server.url("project"))
    tree.git("config", "user.email", "dev@example.com")
    tree.git("config", "user.name", "Dev")
    tree.wait_for(lambda status: status["history_complete"])
    return tree, repo


def commit_all(tree: MountedTree, message: str) -> str:
    tree.git("add", "-A")
    tree.git("commit", "-q", "-m", message)
    commit = tree.git("rev-parse", "HEAD").stdout.strip()
    wait_for_head(tree, commit)
    return commit


def test_edit_commit_push_round_trip(project):
    tree, repo = project
    root = tree.path
    (root / "README.md").write_text("# project\n\nintro\nmore\n")
    (root / "new.txt").write_text("brand new\n")
    (root / "docs/guide.md").unlink()
    os.rename(root / "src/app.py", root / "src/main.py")
    os.rename(root / "src/lib", root / "src/core")
    (root / "src/core/util.py").chmod(0o755)
    os.symlink("src/main.py", root / "main-link")
    (root / "pkg/inner").mkdir(parents=True)
    (root / "pkg/inner/mod.py").write_text("X = 1\n")

    status = set(git_lines(tree, "status", "--porcelain", "--untracked-files=all"))
    assert status == {
        " M README.md",
        " D docs/guide.md",
        " D src/app.py",
        " D src/lib/more.py",
        " D src/lib/util.py",
        "?? main-link",
        "?? new.txt",
        "?? pkg/inner/mod.py",
        "?? src/core/more.py",
        "?? src/core/util.py",
        "?? src/main.py",
    }
    commit = commit_all(tree, "rework")
    assert git_lines(tree, "status", "--porcelain") == []
    tree.git("push", "-q", "origin", "main")
    expected = {
        "README.md": ("100644", b"# project\n\nintro\nmore\n"),
        "new.txt": ("100644", b"brand new\n"),
        "src/main.py": ("100644", b"print('app')\n"),
        "src/core/util.py": ("100755", b"def util():\n    return 1\n"),
        "src/core/more.py": ("100644", b"VALUE = 2\n"),
        "scripts/run.sh": ("100755", b"#!/bin/sh\necho run\n"),
        "link": ("120000", b"README.md"),
        "main-link": ("120000", b"src/main.py"),
        "pkg/inner/mod.py": ("100644", b"X = 1\n"),
    }
    assert served_tree(repo) == expected
    assert (
        subprocess.run(
            ["git", "--git-dir", str(repo), "rev-parse", "main"], capture_output=True, text=True
        ).stdout.strip()
        == commit
    )
    # Once the base moved, the mount still shows the committed content and stays clean.
    assert (root / "src/core/util.py").stat().st_mode & 0o111
    assert os.readlink(root / "main-link") == "src/main.py"
    assert git_lines(tree, "status", "--porcelain") == []


def test_clean_status_diff_and_listing_hydrate_nothing(make_repo, git_server, mounts):
    make_repo("quiet", BASE)
    tree = mounts(git_server.url("quiet"), "--hydrate", "none")
    assert git_lines(tree, "status", "--porcelain") == []
    assert tree.git("diff", "--stat").stdout == ""
    assert tree.status()["hydration"]["hydrated_blobs"] == 0
    listing = subprocess.run(["ls", "-lR", str(tree.path)], capture_output=True, text=True, check=True).stdout
    assert "link -> README.md" in listing
    # ls -l prints symlink targets, and a target is its blob's content: only that blob may arrive.
    assert [arrival["path"] for arrival in tree.record()] == ["link"]


def test_fetch_pull_checkout_and_switch(project, tmp_path, git_server):
    tree, repo = project
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", git_server.url("project"), str(other)], check=True)
    (other / "upstream.txt").write_text("from upstream\n")
    (other / "README.md").write_text("# project\n\nrewritten upstream\n")
    for command in (
        ["add", "-A"],
        ["-c", "user.name=U", "-c", "user.email=u@example.com", "commit", "-qm", "up"],
        ["push", "-q", "origin", "main"],
    ):
        subprocess.run(["git", "-C", str(other), *command], check=True, capture_output=True)

    tree.git("fetch", "-q", "origin")
    tree.git("pull", "-q", "--ff-only")
    assert (tree.path / "upstream.txt").read_text() == "from upstream\n"
    assert (tree.path / "README.md").read_text() == "# project\n\nrewritten upstream\n"
    assert git_lines(tree, "status", "--porcelain") == []

    tree.git("checkout", "-q", "-b", "topic")
    (tree.path / "topic.txt").write_text("topic work\n")
    commit_all(tree, "topic work")
    tree.git("switch", "-q", "main")
    assert not (tree.path / "topic.txt").exists()
    tree.git("switch", "-q", "topic")
    assert (tree.path / "topic.txt").read_text() == "topic work\n"
    tree.git("switch", "-q", "main")
    assert git_lines(tree, "status", "--porcelain") == []


def test_stash_reset_and_clean(project):
    tree, _ = project
    root = tree.path
    (root / "src/app.py").write_text("print('changed')\n")
    (root / "scratch").mkdir()
    (root / "scratch/notes.txt").write_text("untracked\n")
    tree.git("stash", "push", "-q", "-u")
    assert git_lines(tree, "status", "--porcelain") == []
    assert (root / "src/app.py").read_text() == "print('app')\n"
    assert not (root / "scratch").exists()
    tree.git("stash", "pop", "-q")
    assert (root / "src/app.py").read_text() == "print('changed')\n"
    assert (root / "scratch/notes.txt").read_text() == "untracked\n"

    tree.git("reset", "-q", "--hard")
    assert (root / "src/app.py").read_text() == "print('app')\n"
    tree.git("clean", "-q", "-fd")
    assert not (root / "scratch").exists()
    assert git_lines(tree, "status", "--porcelain") == []


def test_merge_and_rebase(project):
    tree, _ = project
    root = tree.path
    base = tree.git("rev-parse", "HEAD").stdout.strip()
    tree.git("checkout", "-q", "-b", "feature")
    (root / "feature.txt").write_text("feature\n")
    commit_all(tree, "feature")
    tree.git("switch", "-q", "main")
    (root / "main.txt").write_text("main\n")
    commit_all(tree, "main work")
    tree.git("merge", "-q", "--no-edit", "feature")
    merge = tree.git("rev-parse", "HEAD").stdout.strip()
    wait_for_head(tree, merge)
    assert len(tree.git("rev-list", "--parents", "-n1", "HEAD").stdout.split()) == 3
    assert (root / "feature.txt").exists() and (root / "main.txt").exists()

    tree.git("checkout", "-q", "-b", "side", base)
    (root / "side.txt").write_text("side\n")
    commit_all(tree, "side")
    tree.git("rebase", "-q", "main")
    rebased = tree.git("rev-parse", "HEAD").stdout.strip()
    wait_for_head(tree, rebased)
    assert tree.git("merge-base", "--is-ancestor", "main", "HEAD", check=False).returncode == 0
    assert {p for p in ("side.txt", "feature.txt", "main.txt") if (root / p).exists()} == {
        "side.txt",
        "feature.txt",
        "main.txt",
    }
    assert git_lines(tree, "status", "--porcelain") == []


def test_log_show_and_blame(project):
    tree, _ = project
    (tree.path / "README.md").write_text("# project\n\nintro\nsecond line\n")
    commit_all(tree, "second line")
    log = git_lines(tree, "log", "--format=%s")
    assert log[:2] == ["second line", "Initial commit"] and len(log) == 5
    assert tree.git("show", "HEAD~1:README.md").stdout == "# project\n\nintro\n"
    assert "+second line" in tree.git("log", "-p", "-1").stdout
    blame = git_lines(tree, "blame", "--porcelain", "README.md")
    assert any(line.startswith("summary second line") for line in blame)


def test_overlay_survives_remount(project):
    tree, _ = project
    (tree.path / "src/app.py").write_text("print('edited')\n")
    (tree.path / "draft.md").write_text("draft\n")
    tree.unmount()
    tree.mount()
    assert (tree.path / "src/app.py").read_text() == "print('edited')\n"
    assert (tree.path / "draft.md").read_text() == "draft\n"
    assert set(git_lines(tree, "status", "--porcelain")) == {" M src/app.py", "?? draft.md"}


def test_dot_git_cannot_be_created_or_replaced(project):
    tree, _ = project
    root = tree.path
    for attempt in (
        lambda: (root / ".GIT").mkdir(),
        lambda: (root / "src/.git").mkdir(),
        lambda: os.rename(root / "docs", root / "src/.Git"),
        lambda: (root / ".git").write_text("gitdir: /tmp/elsewhere\n"),
        lambda: (root / ".git").unlink(),
    ):
        with pytest.raises(OSError) as failure:
            attempt()
        assert failure.value.errno in (errno.EPERM, errno.EACCES, errno.EINVAL)
    assert (root / ".git").read_text().startswith("gitdir: ")
    assert (root / "docs/guide.md").exists()


def test_posix_behaviour_of_the_overlay(project):
    tree, _ = project
    root = tree.path
    with open(root / "README.md", "rb") as handle:
        (root / "README.md").unlink()
        assert handle.read() == b"# project\n\nintro\n"
    with open(root / "temp.txt", "w+") as handle:
        handle.write("still here")
        os.unlink(root / "temp.txt")
        handle.flush()
        handle.seek(0)
        assert handle.read() == "still here"
    with open(root / "src/app.py", "a") as handle:
        handle.write("# appended\n")
    assert (root / "src/app.py").read_text() == "print('app')\n# appended\n"
    os.truncate(root / "src/lib/util.py", 3)
    assert (root / "src/lib/util.py").read_bytes() == b"def"
    os.utime(root / "docs/guide.md", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    assert (root / "docs/guide.md").stat().st_mtime_ns == 1_500_000_000_000_000_000
    os.link(root / "docs/guide.md", root / "docs/hard")  # tests/test_posix.py covers links and xattrs
    assert (root / "docs/hard").stat().st_ino == (root / "docs/guide.md").stat().st_ino
    os.setxattr(root / "docs/guide.md", "user.test", b"1")
    assert os.getxattr(root / "docs/hard", "user.test") == b"1"
    mount_fs = os.statvfs(root)
    state_fs = os.statvfs(tree.root)
    assert mount_fs.f_blocks == state_fs.f_blocks and mount_fs.f_frsize == state_fs.f_frsize


def test_fsync_is_durable_across_a_daemon_crash(project):
    tree, _ = project
    path = tree.path / "precious.txt"
    with open(path, "wb") as handle:
        handle.write(b"must survive\n")
        handle.flush()
        os.fsync(handle.fileno())
    pid = tree.status()["pid"]
    os.kill(pid, 9)
    wait_for_exit(pid)
    run_cli("unmount", str(tree.path), root=tree.root, check=False)
    tree.mount()
    assert path.read_bytes() == b"must survive\n"


def test_fsmonitor_hook_answers_from_the_journal(project):
    tree, _ = project
    hook = tree.git("config", "core.fsmonitor").stdout.strip()

    def ask(token: str) -> tuple[str, set[str]]:
        output = subprocess.run([hook, "2", token], capture_output=True, check=True).stdout.decode()
        new_token, *paths = output.split("\0")
        return new_token, {path for path in paths if path}

    first, everything = ask("")
    assert everything == {"/"}
    same, nothing = ask(first)
    assert nothing == set()
    assert same == first
    (tree.path / "docs/guide.md").write_text("changed\n")
    (tree.path / "fresh.txt").write_text("new\n")
    later, changed = ask(first)
    assert {"docs/guide.md", "fresh.txt"} <= changed
    assert later != first
    assert ask("artifactfs:1:0")[1] == {"/"}, "a token from another journal must force a full scan"
    assert set(git_lines(tree, "status", "--porcelain")) == {" M docs/guide.md", "?? fresh.txt"}


def test_commit_with_nothing_hydrated(make_repo, git_server, mounts):
    """write-tree's prefetch of every missing blob is one lazy fetch, which the daemon serves through the hydrator."""
    files = {f"dir{d}/file{f}.txt": f"{d}-{f}\n".encode() for d in range(10) for f in range(20)}
    make_repo("wide", files)
    tree = mounts(git_server.url("wide"), "--hydrate", "none")
    (tree.path / "dir3/file4.txt").write_text("rewritten\n")  # O_TRUNC: nothing to hydrate
    tree.git("-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-am", "one file")
    status = tree.status()
    assert status["git"]["fetches"] == 1 and status["git"]["blobs_from_hydrator"] == len(files) - 1
    assert status["hydration"]["hydrated_blobs"] == len(files) - 1
    assert tree.git("show", "--stat", "--format=", "HEAD").stdout.split()[:1] == ["dir3/file4.txt"]
    assert git_lines(tree, "status", "--porcelain") == []
