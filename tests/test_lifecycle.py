"""State lifecycle, end to end: a failed mount leaves nothing; unmount keeps state, forget removes it;
every mount on the machine is listed and found, whatever state root it uses."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from test_hydration import delete_object

from artifactfs import state
from artifactfs.daemon.recovery import live_registered
from artifactfs.testing import GitHttpServer, git
from artifactfs.testing.mounts import MountedTree, force_unmount, is_mounted, run_cli
from artifactfs.testing.waiting import wait_for_exit

MakeRepo = Callable[..., tuple[Path, str]]
MountFactory = Callable[..., MountedTree]
ISOLATED_GIT = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def state_dirs(root: Path) -> list[Path]:
    mounts = state.StateRoot(root).mounts_dir
    return sorted(mounts.iterdir()) if mounts.exists() else []


# --------------------------------------------------------------------- failed mounts


@pytest.mark.parametrize("kind", ["bad url", "unreachable", "unknown ref", "auth", "not empty", "busy"])
def test_a_failed_mount_leaves_nothing_behind(
    kind: str, make_repo: MakeRepo, git_root: Path, tmp_path: Path, fuse: None
) -> None:
    make_repo("demo")
    root = tmp_path / "fresh-root"
    target = tmp_path / "new" / "mnt"
    with GitHttpServer(git_root, auth=("alice", "right")) as server:
        good = server.url("demo").replace("http://", "http://alice:right@")
        remote, arguments = {
            "bad url": ("http://exa mple.com/repo.git", ()),
            "unreachable": (f"http://127.0.0.1:{closed_port()}/demo.git", ()),
            "unknown ref": (good, ("--ref", "no-such-branch")),
            "auth": (server.url("demo").replace("http://", "http://alice:wrong@"), ()),
            "not empty": (good, ()),
            "busy": (good, ()),
        }[kind]
        busy = None
        existed = kind in ("unreachable", "auth", "not empty", "busy")
        if kind in ("unreachable", "auth"):
            target.mkdir(parents=True)
        if kind == "not empty":
            target.mkdir(parents=True)
            (target / "mine.txt").write_text("keep me\n")
        if kind == "busy":
            busy = MountedTree(good, target, tmp_path / "other-root").mount()
        try:
            result = run_cli(
                "mount", *arguments, remote, str(target), root=root, check=False, env=ISOLATED_GIT
            )
            lines = result.stderr.strip().splitlines()
            assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("artifactfs: error: ")
            assert not root.exists(), f"state left behind: {sorted(root.rglob('*'))}"
            if kind == "not empty":
                assert (target / "mine.txt").read_text() == "keep me\n"
            elif kind == "busy":
                assert (target / "README.md").read_bytes() == b"# demo\n", "the first mount must keep working"
            elif existed:
                assert target.is_dir() and not is_mounted(target) and list(target.iterdir()) == []
            else:
                assert not (tmp_path / "new").exists(), "the directories mount created must go again"
        finally:
            if busy is not None:
                busy.unmount()


def test_a_failed_mount_keeps_state_it_did_not_create(
    make_repo: MakeRepo, git_server: GitHttpServer, tmp_path: Path, state_root: Path, mounts: MountFactory
) -> None:
    make_repo("demo")
    first = mounts(git_server.url("demo"), name="first")
    (first.path / "edit.txt").write_text("mine\n")
    first.unmount()
    before = {path: path.stat().st_mtime_ns for path in state_root.rglob("*") if path.is_file()}
    failed = run_cli(
        "mount",
        "--ref",
        "nope",
        git_server.url("demo"),
        str(tmp_path / "second"),
        root=state_root,
        check=False,
    )
    assert failed.returncode != 0 and "nope" in failed.stderr
    assert not (tmp_path / "second").exists()
    after = {path: path.stat().st_mtime_ns for path in state_root.rglob("*") if path.is_file()}
    assert after == before, "a failed mount must neither add nor touch state"
    first.mount()
    assert (first.path / "edit.txt").read_text() == "mine\n"


# --------------------------------------------------------------------- unmount keeps, forget removes


def test_unmount_keeps_state_and_forget_removes_it(
    make_repo: MakeRepo, git_server: GitHttpServer, state_root: Path, mounts: MountFactory
) -> None:
    make_repo("demo")
    tree = mounts(git_server.url("demo"))
    (tree.path / "notes.txt").write_text("remember me\n")
    (kept,) = state_dirs(state_root)

    refused = run_cli("forget", str(tree.path), root=state_root, check=False)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        f"artifactfs: error: {tree.path} is mounted; unmount it first (or: artifactfs unmount --forget)"
    ]
    assert kept.exists() and (tree.path / "notes.txt").exists()

    tree.unmount()
    assert state_dirs(state_root) == [kept] and state.MountState(kept).gitdir.is_dir()
    tree.mount()
    assert (tree.path / "notes.txt").read_text() == "remember me\n", "a remount reuses the kept state"
    tree.unmount()

    forgotten = run_cli("forget", str(tree.path), root=state_root)
    assert forgotten.stdout.strip() == f"forgot {tree.path}: removed 1 state directory"
    assert state_dirs(state_root) == []
    again = run_cli("forget", str(tree.path), root=state_root, check=False)
    assert again.returncode != 0 and "no state kept" in again.stderr
    tree.mount()
    assert not (tree.path / "notes.txt").exists(), "after forget, a mount starts afresh"
    assert (tree.path / "README.md").read_bytes() == b"# demo\n"


def test_unmount_forget_unmounts_and_removes_the_state(
    make_repo: MakeRepo, git_server: GitHttpServer, state_root: Path, mounts: MountFactory
) -> None:
    make_repo("demo")
    tree = mounts(git_server.url("demo"))
    assert len(state_dirs(state_root)) == 1
    run_cli("unmount", "--forget", str(tree.path), root=state_root)
    assert not is_mounted(tree.path)
    assert state_dirs(state_root) == []
    assert list((state_root / "run").iterdir()) == []


# --------------------------------------------------------------------- one registry for the machine


def test_list_status_and_unmount_find_mounts_of_every_root(
    make_repo: MakeRepo, git_server: GitHttpServer, tmp_path: Path, fuse: None, mount_registry: Path
) -> None:
    make_repo("alpha", {"a.txt": b"alpha\n"})
    make_repo("beta", {"b.txt": b"beta\n"})
    first = MountedTree(git_server.url("alpha"), tmp_path / "alpha", tmp_path / "root-one")
    second = MountedTree(git_server.url("beta"), tmp_path / "beta", tmp_path / "root-two")
    elsewhere = tmp_path / "root-three"
    try:
        first.mount()
        second.mount()
        rows = json.loads(run_cli("list", "--json", root=elsewhere).stdout)
        by_mountpoint = {row["mountpoint"]: row for row in rows}
        assert set(by_mountpoint) == {str(first.path), str(second.path)}
        assert by_mountpoint[str(first.path)]["root"] == str(first.root)
        assert by_mountpoint[str(second.path)]["root"] == str(second.root)
        assert {row["state"] for row in rows} == {"mounted"}
        assert not elsewhere.exists(), "listing creates no state root"

        shown = json.loads(run_cli("status", "--json", str(second.path), root=elsewhere).stdout)
        assert shown["mountpoint"] == str(second.path) and shown["remote"] == git_server.url("beta")

        run_cli("unmount", str(first.path), root=elsewhere)
        assert not is_mounted(first.path)
        rows = json.loads(run_cli("list", "--json", root=elsewhere).stdout)
        assert [row["mountpoint"] for row in rows] == [str(second.path)]

        pid = second.status()["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for_exit(pid, timeout=30)
        assert live_registered() == []
        assert list(mount_registry.iterdir()) == [], "the dead daemon's entry is pruned"
        assert run_cli("list", root=elsewhere).stdout.strip() == "no mounts"
    finally:
        first.unmount()
        second.unmount()
        force_unmount(second.path)


def test_registry_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ARTIFACTFS_RUNTIME_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert state.registry_dir() == Path("/run/artifactfs"), "root's mounts: one place, services included"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert state.registry_dir() == tmp_path / "xdg" / "artifactfs"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert state.registry_dir().name == "artifactfs-1000"
    monkeypatch.setenv("ARTIFACTFS_RUNTIME_DIR", str(tmp_path / "chosen"))
    assert state.registry_dir() == tmp_path / "chosen"


def test_footprint_removes_only_what_the_attempt_created(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    whole = state.Footprint([tmp_path / "kept" / "new" / "state"], whole=True)
    only_empty = state.Footprint([tmp_path / "mountpoint"], whole=False)
    (tmp_path / "kept" / "new" / "state" / "deep").mkdir(parents=True)
    (tmp_path / "kept" / "new" / "state" / "deep" / "daemon.log").write_text("log\n")
    (tmp_path / "mountpoint").mkdir()
    (tmp_path / "mountpoint" / "someone-elses.txt").write_text("x")
    whole.remove()
    only_empty.remove()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept", "mountpoint"]
    assert list((tmp_path / "kept").iterdir()) == []
    assert (tmp_path / "mountpoint" / "someone-elses.txt").exists(), "never delete files in a mountpoint"


# --------------------------------------------------------------------- the other commands' habits


def test_status_watch_exits_non_zero_when_blobs_failed(
    make_repo: MakeRepo, git_server: GitHttpServer, state_root: Path, mounts: MountFactory
) -> None:
    make_repo("whole", {"a.txt": b"a\n"})
    repo, _ = make_repo("holey", {"a.txt": b"a\n", "gone.txt": b"missing on the server\n"})
    delete_object(repo, git(repo, "rev-parse", "HEAD:gone.txt").decode().strip())
    whole = mounts(git_server.url("whole"), name="whole")
    holey = mounts(git_server.url("holey"), name="holey")

    fine = run_cli("status", "--watch", str(whole.path), root=state_root, check=False)
    assert fine.returncode == 0 and fine.stderr == ""
    failed = run_cli("status", "--watch", str(holey.path), root=state_root, check=False)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        "artifactfs: error: hydration finished with 1 blobs failed (see `artifactfs status` for the errors)"
    ]


def test_prefetch_of_a_pathspec_that_matches_nothing_is_an_error(
    make_repo: MakeRepo, git_server: GitHttpServer, state_root: Path, mounts: MountFactory
) -> None:
    make_repo("demo")
    tree = mounts(git_server.url("demo"), "--hydrate", "none")
    assert "blobs first" in run_cli("prefetch", str(tree.path), "src", root=state_root).stdout
    result = run_cli("prefetch", str(tree.path), "src", "no/such", "*.rs", root=state_root, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "artifactfs: error: no file in the mount matches '*.rs', 'no/such'"
    ]


def test_gc_prints_human_sizes(
    make_repo: MakeRepo, git_server: GitHttpServer, state_root: Path, mounts: MountFactory
) -> None:
    make_repo("demo", {"big.bin": bytes(range(256)) * 8192})
    tree = mounts(git_server.url("demo"))
    tree.wait_for(lambda status: status["hydration"]["complete"])
    tree.unmount()
    output = run_cli("gc", "--max-size", "0", "--keep-recent", "0", root=state_root).stdout.strip()
    assert output == "blob cache: 2.0 MiB -> 0 B; evicted 1 blobs (2.0 MiB), kept 0 recently used"


def test_a_state_root_inside_a_mount_is_refused_up_front(
    make_repo: MakeRepo, git_server: GitHttpServer, tmp_path: Path, state_root: Path, mounts: MountFactory
) -> None:
    make_repo("demo")
    outer = mounts(git_server.url("demo"), name="outer")
    target = tmp_path / "inner"
    for root, where in ((target / "state", f"the mount directory {target}"), (outer.path / "state", "")):
        result = run_cli("mount", git_server.url("demo"), str(target), root=root, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1
        assert f"the state root {root} is inside " in lines[0] and "pass a --root outside it" in lines[0]
        assert (where or f"the ArtifactFS mount {outer.path}") in lines[0]
        assert not target.exists() and not root.exists()
    assert (outer.path / "README.md").read_bytes() == b"# demo\n"
