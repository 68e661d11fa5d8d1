"""The protocol v2 engine over real transports: `git http-backend` behind the
test HTTP server, and local `git upload-pack`."""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio

from artifactfs.errors import (
    AuthenticationError,
    MissingObjectError,
    ProtocolError,
    RemoteError,
    RemoteNotFoundError,
    RemoteUnreachableError,
    TransientRemoteError,
    UnsupportedObjectFormatError,
)
from artifactfs.remote import (
    RemoteSession,
    RemoteURL,
    open_remote,
)
from artifactfs.remote.protocol import parse_capabilities
from artifactfs.testing import GitHttpServer, git

pytestmark = pytest.mark.anyio

MakeRepo = Callable[..., tuple[Path, str]]
SECRET = "s3cret-t0ken"
BIG_FILES = {f"data/file{i:02d}.bin": random.Random(i).randbytes(4096) for i in range(40)}


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture(autouse=True)
def isolated_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the user's git config (credential helpers above all) out of the tests."""
    config = tmp_path / "gitconfig"
    config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return config


@pytest.fixture(params=["http", "local"])
def remote_for(request: pytest.FixtureRequest, git_server: GitHttpServer) -> Callable[[Path], RemoteURL]:
    """Maps a served repository to a remote over each transport in turn."""
    if request.param == "http":
        return lambda path: RemoteURL.parse(git_server.url(path.name))
    return lambda path: RemoteURL.parse(str(path))


async def read_pack(
    session: RemoteSession,
    wants: list[str],
    *,
    filter_spec: str | None = None,
    depth: int | None = None,
    shallows: Sequence[str] = (),
    haves: Sequence[str] = (),
) -> tuple[bytes, list[tuple[str, str]]]:
    """Fetch and return ``(whole pack, shallow info)``."""
    async with session.fetch(
        wants, filter_spec=filter_spec, depth=depth, shallows=shallows, haves=haves
    ) as response:
        chunks = [chunk async for chunk in response.pack_chunks()]
        return b"".join(chunks), response.shallow_info


def pack_objects(pack: bytes, where: Path) -> dict[str, str]:
    """Index ``pack`` with real git and return ``{oid: type}`` of what it holds."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", str(where)], check=True)
    pack_path = where / "incoming.pack"
    pack_path.write_bytes(pack)
    subprocess.run(
        ["git", f"--git-dir={where}", "index-pack", str(pack_path)], check=True, capture_output=True
    )
    listing = subprocess.run(
        ["git", f"--git-dir={where}", "verify-pack", "-v", str(pack_path.with_suffix(".idx"))],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    objects: dict[str, str] = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 3 and len(fields[0]) == 40 and fields[1] in ("commit", "tree", "blob", "tag"):
            objects[fields[0]] = fields[1]
    return objects


def blob_oids(repo: Path, rev: str = "HEAD") -> dict[str, str]:
    listing = git(repo, "ls-tree", "-r", rev).decode()
    return {
        line.split("\t")[1]: line.split()[2] for line in listing.splitlines() if line.split()[1] == "blob"
    }


async def test_capabilities(make_repo: MakeRepo, remote_for: Callable[[Path], RemoteURL]) -> None:
    path, _ = make_repo()
    async with await open_remote(remote_for(path)) as session:
        assert {"filter", "shallow"} <= set(session.capabilities["fetch"].split())
        assert session.capabilities["agent"].startswith("git/")
        assert "ls-refs" in session.capabilities
        assert session.object_info_supported


async def test_server_without_object_info(git_root: Path, make_repo: MakeRepo) -> None:
    _, tip = make_repo()
    with GitHttpServer(git_root, object_info=False) as server:
        async with await open_remote(RemoteURL.parse(server.url("repo"))) as session:
            assert "object-info" not in session.capabilities
            assert not session.object_info_supported
            with pytest.raises(RemoteError, match="does not support object-info"):
                await session.object_info([tip])
            assert [ref.oid for ref in await session.ls_refs(["HEAD"])] == [tip]


async def test_ls_refs_reports_head_symref_and_peeled_tags(
    make_repo: MakeRepo, remote_for: Callable[[Path], RemoteURL]
) -> None:
    path, tip = make_repo(branch="trunk")
    git(path, "-c", "user.name=T", "-c", "user.email=t@e", "tag", "-a", "-m", "v1", "v1", tip)
    tag_oid = git(path, "rev-parse", "refs/tags/v1").decode().strip()
    async with await open_remote(remote_for(path)) as session:
        refs = {ref.name: ref for ref in await session.ls_refs()}
        tags = await session.ls_refs(["refs/tags/"])
    assert refs["HEAD"].symref_target == "refs/heads/trunk"
    assert refs["HEAD"].oid == refs["refs/heads/trunk"].oid == tip
    assert refs["refs/tags/v1"].oid == tag_oid
    assert refs["refs/tags/v1"].peeled == tip
    assert [ref.name for ref in tags] == ["refs/tags/v1"]


async def test_blobless_depth1_fetch_is_small(
    tmp_path: Path, make_repo: MakeRepo, remote_for: Callable[[Path], RemoteURL]
) -> None:
    path, tip = make_repo(files=BIG_FILES, extra_commits=30)
    async with await open_remote(remote_for(path)) as session:
        small, shallow_info = await read_pack(session, [tip], filter_spec="blob:none", depth=1)
        full, _ = await read_pack(session, [tip])
    assert small.startswith(b"PACK") and full.startswith(b"PACK")
    assert shallow_info == [("shallow", tip)]
    assert len(small) * 20 < len(full)
    objects = await trio.to_thread.run_sync(pack_objects, small, tmp_path / "check")
    assert objects[tip] == "commit"
    assert "blob" not in objects.values()
    assert "tree" in objects.values()


async def test_fetch_of_listed_blobs(
    tmp_path: Path, git_server: GitHttpServer, make_repo: MakeRepo, remote_for: Callable[[Path], RemoteURL]
) -> None:
    path, _ = make_repo()
    wanted = sorted(blob_oids(path).values())
    async with await open_remote(remote_for(path)) as session:
        pack, shallow_info = await read_pack(session, wanted)
    assert shallow_info == []
    assert await trio.to_thread.run_sync(pack_objects, pack, tmp_path / "check") == dict.fromkeys(
        wanted, "blob"
    )


async def test_server_records_fetch_requests(git_server: GitHttpServer, make_repo: MakeRepo) -> None:
    path, tip = make_repo()
    wanted = sorted(blob_oids(path).values())
    async with await open_remote(RemoteURL.parse(git_server.url("repo"))) as session:
        await read_pack(session, [tip], filter_spec="blob:none", depth=1)
        pack, _ = await read_pack(session, wanted)
    fetches = [record for record in git_server.requests if record.command == "fetch"]
    assert [(r.want_count, r.has_filter) for r in fetches] == [(1, True), (len(wanted), False)]
    assert fetches[1].wants == tuple(wanted)
    assert fetches[1].response_bytes > len(pack)
    assert "thin-pack" not in fetches[0].arguments and "done" in fetches[0].arguments


async def test_deepen_reports_shallow_boundary(
    make_repo: MakeRepo, remote_for: Callable[[Path], RemoteURL]
) -> None:
    path, tip = make_repo(extra_commits=5)
    parent = git(path, "rev-parse", f"{tip}~1").decode().strip()
    grandparent = git(path, "rev-parse", f"{tip}~2").decode().strip()
    async with await open_remote(remote_for(path)) as session:
        _, first = await read_pack(session, [tip], filter_spec="blob:none", depth=2)
        _, deeper = await read_pack(
            session, [tip], filter_spec="blob:none", depth=3, shallows=[parent], haves=[tip]
        )
    assert first == [("shallow", parent)]
    assert sorted(deeper) == sorted([("shallow", grandparent), ("unshallow", parent)])


async def test_object_info_sizes_match_git(
    make_repo: MakeRepo, remote_for: Callable[[Path], RemoteURL]
) -> None:
    path, tip = make_repo(files=BIG_FILES | {"empty": b""})
    oids = [*blob_oids(path).values(), tip]
    async with await open_remote(remote_for(path)) as session:
        sizes = await session.object_info(oids)
    assert sizes == {oid: int(git(path, "cat-file", "-s", oid)) for oid in oids}
    assert 0 in sizes.values() and 4096 in sizes.values()


async def test_missing_object(make_repo: MakeRepo, remote_for: Callable[[Path], RemoteURL]) -> None:
    path, tip = make_repo()
    absent = "0123456789abcdef0123456789abcdef01234567"
    async with await open_remote(remote_for(path)) as session:
        with pytest.raises(MissingObjectError) as fetch_error:
            async with session.fetch([tip, absent]):
                pass
        with pytest.raises(MissingObjectError) as info_error:
            await session.object_info([tip, absent])
        assert [ref.oid for ref in await session.ls_refs(["refs/heads/"])] == [tip]
    for error in (fetch_error.value, info_error.value):
        assert isinstance(error, MissingObjectError)
        assert error.oid == absent
        assert absent in str(error)


async def test_filter_refused_when_server_lacks_it(
    make_repo: MakeRepo, remote_for: Callable[[Path], RemoteURL]
) -> None:
    path, tip = make_repo()
    git(path, "config", "uploadpack.allowFilter", "false")
    async with await open_remote(remote_for(path)) as session:
        assert "filter" not in session.capabilities["fetch"].split()
        with pytest.raises(ProtocolError, match="filter"):
            session.fetch([tip], filter_spec="blob:none")


@pytest.mark.parametrize("fault", ["reset", "500", "truncate", "stall:3", "flip-raw"])
async def test_injected_faults_are_transient(
    git_server: GitHttpServer, make_repo: MakeRepo, fault: str
) -> None:
    _, tip = make_repo(files=BIG_FILES)
    async with await open_remote(RemoteURL.parse(git_server.url("repo")), timeout=0.5) as session:
        git_server.inject(fault)
        with pytest.raises(TransientRemoteError):
            await read_pack(session, [tip])
        pack, _ = await read_pack(session, [tip])
    assert pack.startswith(b"PACK")
    assert [record.fault for record in git_server.requests if record.command == "fetch"] == [fault, None]


async def test_pack_streams_in_chunks(git_server: GitHttpServer, make_repo: MakeRepo) -> None:
    _, tip = make_repo(files={f"f{i}": random.Random(1000 + i).randbytes(65536) for i in range(16)})
    async with (
        await open_remote(RemoteURL.parse(git_server.url("repo"))) as session,
        session.fetch([tip]) as response,
    ):
        sizes = [len(chunk) async for chunk in response.pack_chunks()]
    assert sum(sizes) > 16 * 65536
    assert len(sizes) > 4


async def test_concurrent_commands_share_one_session(git_server: GitHttpServer, make_repo: MakeRepo) -> None:
    path, _ = make_repo(files=BIG_FILES)
    blobs = sorted(blob_oids(path).values())
    results: dict[int, int] = {}
    async with await open_remote(RemoteURL.parse(git_server.url("repo"))) as session:

        async def worker(index: int) -> None:
            pack, _ = await read_pack(session, blobs[index::4])
            results[index] = len(pack)
            assert len(await session.object_info(blobs[index::4])) == len(blobs[index::4])

        async with trio.open_nursery() as nursery:
            for index in range(4):
                nursery.start_soon(worker, index)
    assert sorted(results) == [0, 1, 2, 3] and min(results.values()) > 10 * 4096
    assert sorted({w for r in git_server.requests if r.command == "fetch" for w in r.wants}) == blobs


# --- authentication -------------------------------------------------------


@pytest.fixture
def auth_server(git_root: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(git_root, auth=("alice", SECRET)) as server:
        yield server


def url_with(server: GitHttpServer, userinfo: str) -> str:
    return server.url("repo").replace("http://", f"http://{userinfo}@")


async def test_credentials_in_url(auth_server: GitHttpServer, make_repo: MakeRepo) -> None:
    _, tip = make_repo()
    async with await open_remote(RemoteURL.parse(url_with(auth_server, f"alice:{SECRET}"))) as session:
        assert [ref.oid for ref in await session.ls_refs(["HEAD"])] == [tip]


async def test_wrong_password_never_leaks(
    auth_server: GitHttpServer, make_repo: MakeRepo, caplog: pytest.LogCaptureFixture
) -> None:
    make_repo()
    caplog.set_level(logging.DEBUG)
    remote = RemoteURL.parse(url_with(auth_server, "alice:wrong-" + SECRET))
    with pytest.raises(AuthenticationError) as info:
        await open_remote(remote)
    for text in (str(info.value), repr(info.value), repr(remote), remote.redacted(), caplog.text):
        assert SECRET not in text
    assert "alice@127.0.0.1" in str(info.value)


async def test_no_credentials_available(auth_server: GitHttpServer, make_repo: MakeRepo) -> None:
    make_repo()
    with pytest.raises(AuthenticationError, match="no credentials found"):
        await open_remote(RemoteURL.parse(auth_server.url("repo")))


def configure_store_helper(config: Path, store: Path, server: GitHttpServer, password: str) -> None:
    store.write_text(f"http://alice:{password}@127.0.0.1:{server.port}\n")
    config.write_text(f'[credential]\n\thelper = "store --file={store}"\n')


async def test_credential_helper_supplies_password(
    tmp_path: Path,
    isolated_git_config: Path,
    auth_server: GitHttpServer,
    make_repo: MakeRepo,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, tip = make_repo()
    store = tmp_path / "credentials"
    configure_store_helper(isolated_git_config, store, auth_server, SECRET)
    caplog.set_level(logging.DEBUG)
    async with await open_remote(RemoteURL.parse(auth_server.url("repo"))) as session:
        pack, _ = await read_pack(session, [tip], filter_spec="blob:none", depth=1)
    assert pack.startswith(b"PACK")
    assert SECRET in store.read_text()
    assert SECRET not in caplog.text


async def test_rejected_helper_credentials_are_erased(
    tmp_path: Path, isolated_git_config: Path, auth_server: GitHttpServer, make_repo: MakeRepo
) -> None:
    make_repo()
    store = tmp_path / "credentials"
    configure_store_helper(isolated_git_config, store, auth_server, "stale-password")
    with pytest.raises(AuthenticationError) as info:
        await open_remote(RemoteURL.parse("http://alice@" + auth_server.url("repo").removeprefix("http://")))
    assert "stale-password" not in str(info.value)
    assert "stale-password" not in store.read_text()


# --- unreachable, missing and non-v2 remotes --------------------------------


async def test_unreachable_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RemoteUnreachableError):
        await open_remote(RemoteURL.parse(f"http://127.0.0.1:{port}/repo.git"), timeout=5)


async def test_missing_repository_is_not_found(git_server: GitHttpServer, tmp_path: Path) -> None:
    with pytest.raises(RemoteNotFoundError, match="HTTP 404"):
        await open_remote(RemoteURL.parse(git_server.url("absent")))
    with pytest.raises(RemoteNotFoundError, match="not a Git repository"):
        await open_remote(RemoteURL.parse(str(tmp_path)))


@pytest.fixture
def dumb_http_url(tmp_path: Path) -> Iterator[str]:
    """URL of a repository on a plain static-file HTTP server (dumb protocol only)."""
    site = tmp_path / "site"
    (site / "repo.git" / "info").mkdir(parents=True)
    (site / "repo.git" / "info" / "refs").write_text(
        "0123456789abcdef0123456789abcdef01234567\trefs/heads/main\n"
    )
    with subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory", str(site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            port = server.stdout.readline().split("port ")[1].split()[0]
            yield f"http://127.0.0.1:{port}/repo.git"
        finally:
            server.kill()


async def test_dumb_http_server_is_not_found(dumb_http_url: str) -> None:
    with pytest.raises(RemoteNotFoundError, match="not a smart Git HTTP server"):
        await open_remote(RemoteURL.parse(dumb_http_url))


def test_sha256_advertisement_is_refused(make_repo: MakeRepo) -> None:
    path, _ = make_repo(object_format="sha256")
    advertisement = subprocess.run(
        ["git", "upload-pack", "--stateless-rpc", "--advertise-refs", str(path)],
        env={**os.environ, "GIT_PROTOCOL": "version=2"},
        capture_output=True,
        check=True,
    ).stdout
    assert b"object-format=sha256" in advertisement
    with pytest.raises(UnsupportedObjectFormatError, match="uses sha256 object ids") as caught:
        parse_capabilities(advertisement, str(path))
    assert "\n" not in str(caught.value)


def test_protocol_v0_advertisement_is_rejected(make_repo: MakeRepo) -> None:
    path, _ = make_repo()
    env = {key: value for key, value in os.environ.items() if key != "GIT_PROTOCOL"}
    v0 = subprocess.run(
        ["git", "upload-pack", "--stateless-rpc", "--advertise-refs", str(path)],
        env=env,
        capture_output=True,
        check=True,
    ).stdout
    with pytest.raises(ProtocolError, match="version 2"):
        parse_capabilities(v0, str(path))
