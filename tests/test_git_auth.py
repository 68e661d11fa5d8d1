"""git in a mount of a token URL, on a server that requires auth, with no credential helper.

Real FUSE, real ``git http-backend`` demanding HTTP Basic auth, real git with an
empty HOME and no system config. git's own lazy fetches must reach the daemon
(never the origin), commit, push, fetch and pull must work, and the token must
appear in no file and in no process's command line. Also checked here: the pack
writer the daemon answers with, and which credential requests it answers.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs.daemon.gitserve import FetchRequest
from artifactfs.errors import ProtocolError
from artifactfs.remote.credentials import asks_for
from artifactfs.store.packstream import PackStreamParser
from artifactfs.store.packwrite import PackWriter
from artifactfs.testing import GitHttpServer, commit_files
from artifactfs.testing.gitserver import RequestRecord
from artifactfs.testing.mounts import MountedTree, artifactfs_command, force_unmount

TOKEN = "tok-7c1e9a-NEVER-SHOWN"
FILES: dict[str, bytes] = {f"src/f{index}.txt": f"file {index}\n".encode() for index in range(12)}
FILES.update({"README.md": b"# private\n", "src/app.py": b"print('v1')\n"})


@pytest.fixture
def auth_server(git_root: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(git_root, auth=("x", TOKEN)) as server:
        yield server


@pytest.fixture
def isolated(tmp_path: Path) -> dict[str, str]:
    """Environment for git and the daemon: an empty HOME, no system config, no prompts."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Dev",
        "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "Dev",
        "GIT_COMMITTER_EMAIL": "dev@example.com",
    }


@pytest.fixture
def token_tree(
    auth_server: GitHttpServer, isolated: dict[str, str], tmp_path: Path, state_root: Path, fuse: None
) -> Iterator[MountedTree]:
    url = auth_server.url("private").replace("http://", f"http://x:{TOKEN}@")
    tree = MountedTree(url, tmp_path / "mnt", state_root, ["--hydrate", "none"], env=isolated)
    yield tree
    tree.unmount()


def git(tree: MountedTree, env: dict[str, str], *arguments: str) -> str:
    result = subprocess.run(
        ["git", *arguments],
        cwd=tree.path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"git {' '.join(arguments)} failed: {result.stderr.strip()}"
    assert TOKEN not in result.stdout + result.stderr
    return result.stdout


def served_ref(repo: Path, ref: str = "main") -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), "rev-parse", ref], capture_output=True, text=True, check=True
    ).stdout.strip()


def fetches_by_git(server: GitHttpServer) -> list[RequestRecord]:
    """Upload-pack fetches that git made itself rather than the daemon (told apart by user agent)."""
    return [
        record
        for record in server.requests
        if record.command == "fetch" and not record.user_agent.startswith("git/artifactfs")
    ]


def command_lines_with_token() -> list[str]:
    """``PID: command line`` of every process whose command line holds the token."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            shown = cmdline.read_bytes()
        except OSError:
            continue  # the process ended meanwhile
        if TOKEN.encode() in shown:
            found.append(cmdline.parent.name + ": " + shown.replace(b"\0", b" ").decode(errors="replace"))
    return found


def files_with_token(*roots: Path) -> list[Path]:
    return [
        path
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink() and TOKEN.encode() in path.read_bytes()
    ]


def wait_for_head(tree: MountedTree, commit: str) -> None:
    tree.wait_for(lambda status: status["head"] == commit, timeout=10)


def test_git_in_a_token_mount_fetches_commits_pushes_and_pulls(
    make_repo, auth_server, token_tree, isolated, state_root
):
    repo, _ = make_repo("private", FILES)
    tip = commit_files(repo, {"src/app.py": b"print('v2')\n"}, message="app v2")
    tree = token_tree.mount()

    # Lazy fetches of blobs the hydrator tracks (v2) and of an older commit's blob (v1), through the daemon.
    patch = git(tree, isolated, "log", "-p", "-1")
    assert "-print('v1')" in patch and "+print('v2')" in patch
    assert "+print('v2')" in git(tree, isolated, "diff", "HEAD~1", "HEAD", "--", "src/app.py")
    served = tree.status()["git"]
    assert served["blobs_from_hydrator"] >= 1 and served["objects_from_origin"] >= 1, served

    # write-tree's prefetch before the commit wants every blob of the index: all of them come from the daemon.
    (tree.path / "src/app.py").write_text("print('v3')\n")
    git(tree, isolated, "commit", "-q", "-a", "-m", "app v3")
    served = tree.status()["git"]
    assert served["blobs_from_hydrator"] >= len(FILES) and served["failed_fetches"] == 0, served
    assert fetches_by_git(auth_server) == [], "git fetched from the origin by itself"

    git(tree, isolated, "push", "-q")
    local_head = git(tree, isolated, "rev-parse", "HEAD").strip()
    assert served_ref(repo) == local_head and local_head != tip
    assert served["credentials_given"] == 0 and tree.status()["git"]["credentials_given"] >= 1

    upstream = commit_files(
        repo,
        {"docs/new.md": b"from elsewhere\n", "src/f3.txt": b"changed upstream\n"},
        message="pushed from elsewhere",
    )
    git(tree, isolated, "fetch", "-q")
    assert git(tree, isolated, "rev-parse", "origin/main").strip() == upstream
    git(tree, isolated, "pull", "-q", "--ff-only")
    assert git(tree, isolated, "rev-parse", "HEAD").strip() == upstream
    wait_for_head(tree, upstream)
    assert (tree.path / "docs/new.md").read_bytes() == b"from elsewhere\n"
    assert (tree.path / "src/f3.txt").read_bytes() == b"changed upstream\n"
    assert git(tree, isolated, "status", "--porcelain") == ""
    # The only fetches git made itself are the user's: they ask for the new tip, never for single blobs.
    by_git = fetches_by_git(auth_server)
    assert by_git and all(set(record.wants) == {upstream} for record in by_git), by_git

    assert command_lines_with_token() == []
    tree.unmount()
    assert files_with_token(state_root, Path(isolated["HOME"])) == []


def test_remount_rewires_an_existing_gitdir(make_repo, auth_server, token_tree, isolated, state_root):
    repo, _ = make_repo("private", FILES)
    tree = token_tree.mount()
    gitdir = Path(tree.status()["gitdir"])
    tree.unmount()
    # A gitdir written before git was routed through the daemon: none of the wiring.
    for section in ("remote.artifactfs", f"credential.{auth_server.url('private')}"):
        subprocess.run(["git", "--git-dir", str(gitdir), "config", "--remove-section", section], check=True)
    subprocess.run(
        ["git", "--git-dir", str(gitdir), "config", "--unset", "extensions.partialClone"], check=True
    )
    (gitdir / "hooks" / "artifactfs-git").unlink()

    tree.mount()
    assert Path(tree.status()["gitdir"]) == gitdir, "the remount did not reuse the state"
    (tree.path / "README.md").write_text("# private, edited after a remount\n")
    git(tree, isolated, "commit", "-q", "-a", "-m", "after remount")
    served = tree.status()["git"]
    assert served["fetches"] >= 1 and served["blobs_from_hydrator"] >= len(FILES) - 1, served
    assert fetches_by_git(auth_server) == []
    git(tree, isolated, "push", "-q")
    assert served_ref(repo) == git(tree, isolated, "rev-parse", "HEAD").strip()
    tree.unmount()
    assert files_with_token(state_root, Path(isolated["HOME"])) == []


def test_credentials_from_the_users_helper_reach_git_through_the_daemon(
    make_repo, auth_server, isolated, tmp_path, state_root, fuse
):
    """No token in the URL: the daemon fills it from the user's helper, and git in the mount gets it from the daemon."""
    repo, _ = make_repo("private", FILES)
    store = tmp_path / "credentials"
    store.write_text(f"http://x:{TOKEN}@127.0.0.1:{auth_server.port}\n")
    Path(isolated["HOME"], ".gitconfig").write_text(f"[credential]\n\thelper = store --file={store}\n")
    tree = MountedTree(
        auth_server.url("private"), tmp_path / "mnt", state_root, ["--hydrate", "none"], env=isolated
    )
    try:
        tree.mount()
        (tree.path / "README.md").write_text("# private, edited\n")
        git(tree, isolated, "commit", "-q", "-a", "-m", "edit")
        git(tree, isolated, "push", "-q")
        assert served_ref(repo) == git(tree, isolated, "rev-parse", "HEAD").strip()
        assert tree.status()["git"]["credentials_given"] >= 1
        assert fetches_by_git(auth_server) == []
        assert command_lines_with_token() == []
    finally:
        tree.unmount()
    assert files_with_token(state_root) == []


def test_token_is_in_no_command_line_while_mounting(
    make_repo, auth_server, isolated, tmp_path, state_root, fuse
):
    make_repo("private", FILES)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    auth_server.inject("stall:2")  # the tip fetch: keeps the mount command waiting for "ready"
    url = auth_server.url("private").replace("http://", f"http://x:{TOKEN}@")
    command = subprocess.Popen(
        [*artifactfs_command("mount", "--hydrate", "none", url, str(mountpoint))],
        env={**os.environ, **isolated, "ARTIFACTFS_ROOT": str(state_root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        children: list[str] = []
        while not children and command.poll() is None and time.monotonic() < deadline:
            children = [
                pid
                for task in Path(f"/proc/{command.pid}/task").glob("*/children")
                for pid in task.read_text().split()
            ]
            time.sleep(0.01)
        assert children, "the mount command never forked its daemon"
        assert command.poll() is None, "the mount finished before its command line could be checked"
        assert command_lines_with_token() == []
        shown = Path(f"/proc/{command.pid}/cmdline").read_bytes()
        assert b"mount" in shown and b"x@127.0.0.1" in shown, shown
        _, stderr = command.communicate(timeout=60)
        assert command.returncode == 0, stderr.decode()
        assert command_lines_with_token() == []
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
        MountedTree(url, mountpoint, state_root).unmount()
        force_unmount(mountpoint)


def test_helper_never_imports_the_repositorys_own_files(make_repo, git_server, mounts, tmp_path):
    """git runs the helper with the mount as its working directory; a package there named like ours stays inert."""
    marker = tmp_path / "imported-from-the-mount"
    payload = f"open({str(marker)!r}, 'w').close()\n".encode()
    make_repo("hostile", {**FILES, "artifactfs/__init__.py": payload, "artifactfs/githelper.py": payload})
    tree = mounts(git_server.url("hostile"), "--hydrate", "none")
    (tree.path / "README.md").write_text("# edited\n")
    tree.git("-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-am", "edit")
    assert tree.status()["git"]["fetches"] == 1
    assert not marker.exists()


# --------------------------------------------------------------------- pure logic


def test_pack_writer_output_parses_and_indexes(tmp_path):
    objects = [
        ("blob", b"hello\n"),
        ("blob", b""),
        ("blob", random.Random(282).randbytes(300_000)),
        ("blob", b"x" * 2_500_000),
        ("tree", b"100644 a\0" + bytes(20)),
        ("commit", b"tree " + b"0" * 40 + b"\n\nmessage\n"),
    ]
    written = bytearray()
    writer = PackWriter(written.extend, len(objects))
    for type_name, data in objects:
        writer.add_bytes(type_name, data)
    writer.finish()
    parser = PackStreamParser(spool_dir=tmp_path)
    parsed = parser.feed(bytes(written)) + parser.finish()
    assert [(obj.type_name, obj.data) for obj in parsed] == objects
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "repo.git")], check=True)
    indexed = subprocess.run(
        ["git", "--git-dir", str(tmp_path / "repo.git"), "index-pack", "--stdin"],
        input=bytes(written),
        capture_output=True,
        check=False,
    )
    assert indexed.returncode == 0, indexed.stderr.decode()
    with pytest.raises(ValueError):
        PackWriter(bytearray().extend, 2).finish()


def test_fetch_requests_are_parsed_strictly():
    oid = "a" * 40
    request = FetchRequest.parse(
        [
            "thin-pack",
            "no-progress",
            "ofs-delta",
            "filter blob:none",
            f"want {oid}",
            f"shallow {'b' * 40}",
            "done",
        ]
    )
    assert (request.wants, request.shallows, request.haves, request.filter_spec, request.done) == (
        [oid],
        ["b" * 40],
        [],
        "blob:none",
        True,
    )
    for unsupported in (["deepen 1", f"want {oid}"], ["want-ref refs/heads/main"], ["want nothex"], ["done"]):
        with pytest.raises(ProtocolError):
            FetchRequest.parse(unsupported)


@pytest.mark.parametrize(
    ("request_fields", "answered"),
    [
        ({"protocol": "https", "host": "forge.example:8443", "path": "team/repo.git"}, True),
        ({"protocol": "https", "host": "forge.example:8443", "path": "team/repo.git", "username": "x"}, True),
        (
            {"protocol": "https", "host": "forge.example:8443", "path": "team/repo.git", "username": "eve"},
            False,
        ),
        ({"protocol": "https", "host": "forge.example:8443", "path": "team/other.git"}, False),
        ({"protocol": "https", "host": "forge.example:8443"}, False),
        ({"protocol": "http", "host": "forge.example:8443", "path": "team/repo.git"}, False),
        ({"protocol": "https", "host": "evil.example", "path": "team/repo.git"}, False),
    ],
)
def test_credentials_are_answered_for_the_origin_only(request_fields, answered):
    assert asks_for("https://forge.example:8443/team/repo.git", "x", request_fields) is answered


def test_helper_program_imports_neither_trio_nor_click():
    probe = "import sys, artifactfs.githelper; print(sorted({'trio', 'click'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
