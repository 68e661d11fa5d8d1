"""Learned prefetch end to end: a mount records what it reads first; the next mount fetches that first."""

from __future__ import annotations

import shutil
from typing import Any

from artifactfs.state import StateRoot
from artifactfs.testing.mounts import MountedTree, run_cli
from artifactfs.testing.repos import distinct_content as content

FILES = {
    "package.json": b'{"name": "profile"}\n',
    "src/app.py": content("app", 3000),
    "src/lib.py": content("lib", 3000),
    "docs/guide.md": content("guide", 2000),
    "assets/logo.png": content("logo", 20000),
}
READ_FIRST = ["assets/logo.png", "docs/guide.md"]


def arrived(tree: MountedTree) -> list[dict[str, Any]]:
    return tree.record()


def test_the_next_mount_fetches_what_the_last_one_read_first(make_repo, git_server, tmp_path, fuse):
    make_repo(files=FILES)
    remote = git_server.url("repo")
    root = tmp_path / "state"
    mountpoint = tmp_path / "mnt"
    with MountedTree(remote, mountpoint, root, ("--hydrate", "none")) as first:
        for path in READ_FIRST:
            assert (first.path / path).read_bytes() == FILES[path]
    shown = run_cli("profile", "show", remote, root=root).stdout.splitlines()
    assert shown[:2] == ["learned prefetch: on", "2 paths"] and shown[2:] == READ_FIRST

    shutil.rmtree(StateRoot(root).blob_cache_dir)  # a cold cache: the next mount must fetch again
    with MountedTree(remote, mountpoint, root, ("--hydrate", "none")) as second:
        # Nothing is read: with --hydrate none only the profile's paths arrive.
        status = second.wait_for(lambda status: status["hydration"]["hydrated_blobs"] >= 2, timeout=30)
        assert status["profile"]["followed_paths"] == 2
        record = arrived(second)
        assert not any(entry["demanded"] for entry in record)
        assert [entry["path"] for entry in record] == READ_FIRST
        assert (second.path / "src/app.py").read_bytes() == FILES["src/app.py"]

    assert run_cli("profile", "off", remote, root=root).stdout.strip() == "learned prefetch off"
    shutil.rmtree(StateRoot(root).blob_cache_dir)
    with MountedTree(remote, mountpoint, root, ("--hydrate", "none")) as third:
        status = third.status()
        assert status["profile"] == {"enabled": False, "followed_paths": 0, "recorded_paths": 0}
        assert (third.path / "src/lib.py").read_bytes() == FILES["src/lib.py"]
        assert [(entry["path"], entry["demanded"]) for entry in arrived(third)] == [("src/lib.py", True)]

    assert run_cli("profile", "clear", remote, root=root).stdout.strip() == "cleared"
    shown = run_cli("profile", "show", remote, root=root).stdout.splitlines()
    assert shown == ["learned prefetch: off", "0 paths"]
    assert oct((root / "profiles").stat().st_mode & 0o777) == "0o700"
