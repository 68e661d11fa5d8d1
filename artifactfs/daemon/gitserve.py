"""What git in the mount gets from its daemon: objects and credentials.

git in a partial clone fetches missing objects by itself: write-tree's
prefetch before a commit, diff, blame, checkout, ``log -p``. Each such lazy
fetch is one ``git fetch`` of the first promisor remote, which
:mod:`artifactfs.worktree.bridge` points at a helper that relays the
upload-pack session over the control socket to :meth:`GitService.upload_pack`.
That speaks protocol v2 (gitprotocol-v2(5)):

* ``ls-refs`` lists no refs: this remote exists only to hand out objects;
* ``fetch`` makes every wanted object available, then answers with one
  pack. Blobs the hydrator tracks (or the blob cache holds) come through
  :meth:`Hydrator.ensure` at demand priority, so they share its batching,
  verification and retries. Anything else (blobs of older commits, history
  that is not local yet) is fetched from the origin with the request's
  filter and parsed, which checks every object against its id; its blobs
  are stored in the blob cache too. The cache is a git object directory the
  gitdir lists in ``objects/info/alternates``, so git finds every blob
  there once the fetch returns, and the pack carries only commits and trees
  (usually none: an empty pack). A blob is never stored twice.

git's credential helper in the gitdir asks :meth:`GitService.credential`,
which answers only for the origin's protocol, host and path, with what the
daemon itself authenticates with.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from artifactfs.errors import ArtifactFSError, CorruptObjectError, ProtocolError
from artifactfs.hydrator.hydrator import Hydrator
from artifactfs.objects import OBJECT_FORMAT, is_oid
from artifactfs.remote import RemoteSession, RemoteURL, pktline
from artifactfs.remote.credentials import asks_for
from artifactfs.remote.pktline import Packet, PacketKind, PktLineDecoder
from artifactfs.remote.protocol import AGENT
from artifactfs.retry import HYDRATION_BACKOFF, retry_while_transient
from artifactfs.store.blobcache import BlobCache
from artifactfs.store.gitdir import GitDir
from artifactfs.store.packstream import PackObject, PackStreamParser
from artifactfs.store.packwrite import PackWriter

log = logging.getLogger(__name__)

_READ_SIZE = 65536
_BAND_PAYLOAD = pktline.MAX_PAYLOAD - 1
_ADVERTISEMENT = (
    b"".join(
        pktline.encode(line + "\n")
        for line in (
            "version 2",
            f"agent={AGENT}",
            "ls-refs",
            "fetch=shallow filter",
            f"object-format={OBJECT_FORMAT}",
        )
    )
    + pktline.FLUSH_PKT
)
_IGNORED_ARGUMENTS = frozenset({"thin-pack", "no-progress", "include-tag", "ofs-delta"})
"""Fetch arguments that change nothing here: the pack has no deltas and no progress."""


@dataclass
class FetchRequest:
    """The arguments of one ``fetch`` command that this server honours."""

    wants: list[str] = field(default_factory=list)
    haves: list[str] = field(default_factory=list)
    shallows: list[str] = field(default_factory=list)
    filter_spec: str | None = None
    done: bool = False

    @classmethod
    def parse(cls, arguments: Sequence[str]) -> FetchRequest:
        request = cls()
        lists = {"want": request.wants, "have": request.haves, "shallow": request.shallows}
        for argument in arguments:
            name, _, value = argument.partition(" ")
            if name in lists and is_oid(value):
                lists[name].append(value)
            elif name == "filter" and value:
                request.filter_spec = value
            elif argument == "done":
                request.done = True
            elif argument not in _IGNORED_ARGUMENTS:
                raise ProtocolError(f"unsupported fetch argument {pktline.one_line(argument)!r}")
        if not request.wants:
            raise ProtocolError("fetch without any want")
        return request


class _CommandReader:
    """Protocol-v2 command requests, read off the connection one at a time."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._decoder = PktLineDecoder()
        self._packets: deque[Packet] = deque()

    async def _next(self) -> Packet | None:
        while not self._packets:
            chunk = await self._stream.receive_some(_READ_SIZE)
            if not chunk:
                return None
            self._packets.extend(self._decoder.feed(bytes(chunk)))
        return self._packets.popleft()

    async def command(self) -> tuple[str, list[str]] | None:
        """The next command and its arguments; None once git ends the session."""
        packet = await self._next()
        if packet is None or packet.kind is PacketKind.FLUSH:
            return None
        command: str | None = None
        arguments: list[str] = []
        in_arguments = False
        while True:
            if packet is None:
                raise ProtocolError("git ended the session inside a request")
            if packet.kind is PacketKind.FLUSH:
                break
            if packet.kind is PacketKind.DELIM:
                in_arguments = True
            elif packet.kind is not PacketKind.DATA:
                raise ProtocolError("unexpected response-end packet in a request")
            elif in_arguments:
                arguments.append(packet.text())
            elif packet.text().startswith("command="):
                command = packet.text().removeprefix("command=")
            elif (
                packet.text().startswith("object-format=")
                and packet.text() != f"object-format={OBJECT_FORMAT}"
            ):
                raise ProtocolError(f"unsupported {pktline.one_line(packet.text())}")
            packet = await self._next()
        if command is None:
            raise ProtocolError("request names no command")
        return command, arguments


class GitService:
    """Serves git in the mount: upload-pack sessions for its lazy fetches, and credentials."""

    def __init__(
        self, session: RemoteSession, hydrator: Hydrator, cache: BlobCache, remote: RemoteURL, gitdir: GitDir
    ) -> None:
        self._session = session
        self._hydrator = hydrator
        self._cache = cache
        self._remote = remote
        self._gitdir = gitdir
        self.tips_local = trio.Event()
        """Set once every remote branch's tip commit is in the gitdir (see :func:`fetch_branch_tips`)."""
        self._counters = {
            "sessions": 0,
            "fetches": 0,
            "failed_fetches": 0,
            "blobs_from_hydrator": 0,
            "objects_from_origin": 0,
            "objects_in_packs": 0,
            "credentials_given": 0,
        }

    def status(self) -> dict[str, int]:
        return dict(self._counters)

    # ------------------------------------------------------------- credentials

    async def credential(self, request: dict[str, Any]) -> dict[str, str]:
        """Username and password for git's credential request ``request["fields"]``, if it is for the origin."""
        fields = request.get("fields")
        if not isinstance(fields, dict) or not all(isinstance(value, str) for value in fields.values()):
            raise ArtifactFSError("credential needs the fields git sent, as strings")
        remote = self._remote
        if remote.kind != "http" or not asks_for(remote.url, remote.username, fields):
            return {}
        credential = await self._session.credential()
        if credential is None:
            return {}
        self._counters["credentials_given"] += 1
        return {"username": credential.username, "password": credential.password}

    # ------------------------------------------------------------- upload-pack

    async def upload_pack(self, request: dict[str, Any], stream: trio.SocketStream) -> None:
        """Serve one upload-pack session (a stream operation of the control socket)."""
        self._counters["sessions"] += 1
        try:
            await stream.send_all(_ADVERTISEMENT)
            reader = _CommandReader(stream)
            while (command := await reader.command()) is not None:
                name, arguments = command
                if name == "ls-refs":
                    await stream.send_all(pktline.FLUSH_PKT)
                elif name == "fetch":
                    if not await self._fetch(stream, FetchRequest.parse(arguments)):
                        return
                else:
                    raise ProtocolError(f"unsupported command {pktline.one_line(name)!r}")
        except ProtocolError as error:
            log.warning("git's lazy fetch: %s", error)
            await _send_quietly(stream, pktline.encode(f"ERR {error}\n"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("git closed its lazy fetch session early")

    async def _fetch(self, stream: trio.SocketStream, request: FetchRequest) -> bool:
        """Answer one ``fetch``; False if it failed (git gives up on the session then)."""
        self._counters["fetches"] += 1
        started = time.monotonic()
        try:
            objects, shallow_info = await self._gather(request)
        except ArtifactFSError as error:
            self._counters["failed_fetches"] += 1
            log.warning("git's lazy fetch of %d objects failed: %s", len(request.wants), error)
            await stream.send_all(pktline.encode(f"ERR {pktline.one_line(str(error))}\n"))
            return False
        await stream.send_all(_response_head(request, shallow_info))
        await trio.to_thread.run_sync(self._write_pack, objects, stream)
        await stream.send_all(pktline.FLUSH_PKT)
        self._counters["objects_in_packs"] += len(objects)
        log.info(
            "served git's lazy fetch of %d objects (%d in the pack) in %.3fs",
            len(set(request.wants)),
            len(objects),
            time.monotonic() - started,
        )
        return True

    async def _gather(self, request: FetchRequest) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
        """Make every wanted object available: blobs in the cache (through the hydrator, or from the
        origin), the rest returned as (type, content) for the pack; and the origin's shallow-info."""
        wants = list(dict.fromkeys(request.wants))
        local = [oid for oid in wants if self._hydrator.tracks(oid) or self._cache.contains(oid)]
        elsewhere = [oid for oid in wants if oid not in set(local)]
        if elsewhere and not self.tips_local.is_set():
            # A checkout of a branch right after mount: its commit and trees are on their way in one
            # small depth-1 fetch; forwarding would fetch that branch's whole history instead.
            with trio.move_on_after(self._hydrator.settings.read_timeout):
                await self.tips_local.wait()
            elsewhere = [oid for oid in elsewhere if not self._gitdir.has_object(oid)]
        failures: list[ArtifactFSError] = []
        forwarded: dict[str, tuple[str, bytes] | None] = {}
        shallow_info: list[tuple[str, str]] = []
        async with trio.open_nursery() as nursery:

            def fail(error: ArtifactFSError) -> None:  # one missing object fails the fetch: stop waiting
                failures.append(error)
                nursery.cancel_scope.cancel()

            async def ensure(oid: str) -> None:
                try:
                    await self._hydrator.ensure(oid)
                except ArtifactFSError as error:
                    fail(error)

            for oid in local:
                nursery.start_soon(ensure, oid)
            if elsewhere:
                try:
                    forwarded, shallow_info = await retry_while_transient(
                        lambda: self._forward(elsewhere, request),
                        "git's lazy fetch from the origin",
                        self._hydrator.health,
                        HYDRATION_BACKOFF,
                        trio.current_time() + self._hydrator.settings.read_timeout,
                    )
                except ArtifactFSError as error:
                    fail(error)
                except (OSError, trio.BrokenResourceError) as error:  # the origin stayed out of reach
                    fail(ArtifactFSError(f"fetch from the origin failed: {error}"))
        if failures:
            raise failures[0]
        self._counters["blobs_from_hydrator"] += len(local)
        self._counters["objects_from_origin"] += len(forwarded)
        return [obj for obj in forwarded.values() if obj is not None], shallow_info

    async def _forward(
        self, wants: list[str], request: FetchRequest
    ) -> tuple[dict[str, tuple[str, bytes] | None], list[tuple[str, str]]]:
        """Fetch objects the hydrator does not know from the origin. Blobs go to the cache (None
        in the result); other objects are returned as (type, content), keyed by id."""
        session = self._session
        filter_spec = request.filter_spec if session.supports("fetch", "filter") else None
        shallows = request.shallows if session.supports("fetch", "shallow") else []
        parser = PackStreamParser(spool_dir=self._cache.tmp_dir)
        received: dict[str, tuple[str, bytes] | None] = {}
        finished = False
        try:
            async with session.fetch(
                wants, filter_spec=filter_spec, shallows=shallows, haves=request.haves
            ) as response:
                async for chunk in response.pack_chunks(checksum=False):
                    objects = await trio.to_thread.run_sync(parser.feed, chunk)
                    await trio.to_thread.run_sync(self._keep, objects, received)
                finished = True
                await trio.to_thread.run_sync(self._keep, parser.finish(), received)
                shallow_info = response.shallow_info
        finally:
            if not finished:
                _abandon(parser)
        missing = [oid for oid in wants if oid not in received]
        if missing:
            raise CorruptObjectError(
                f"the origin's pack lacks {len(missing)} wanted objects (e.g. {missing[0]})"
            )
        return received, shallow_info

    def _keep(self, objects: Sequence[PackObject], received: dict[str, tuple[str, bytes] | None]) -> None:
        """Store parsed blobs in the cache (checked again against their ids); keep the rest in memory."""
        for obj in objects:
            if obj.type_name == "blob":
                if obj.spool_path is not None:
                    self._cache.adopt_file(obj.oid, obj.spool_path)
                else:
                    assert obj.data is not None
                    self._cache.store_bytes(obj.oid, obj.data)
                received[obj.oid] = None
            elif obj.spool_path is not None:
                received[obj.oid] = (obj.type_name, obj.spool_path.read_bytes())
                obj.spool_path.unlink()
            else:
                assert obj.data is not None
                received[obj.oid] = (obj.type_name, obj.data)

    @staticmethod
    def _write_pack(objects: Sequence[tuple[str, bytes]], stream: trio.SocketStream) -> None:
        """Write the pack as side-band 1 packets (runs in a worker thread)."""

        def sink(data: bytes) -> None:
            trio.from_thread.run(stream.send_all, _band_one(data))

        writer = PackWriter(sink, len(objects))
        for type_name, data in objects:
            writer.add_bytes(type_name, data)
        writer.finish()


def _response_head(request: FetchRequest, shallow_info: Sequence[tuple[str, str]]) -> bytes:
    """The sections before the pack: ``ready`` when git did not say ``done``, then shallow-info."""
    parts: list[bytes] = []
    if not request.done:
        parts += [pktline.encode("acknowledgments\n"), pktline.encode("ready\n"), pktline.DELIM_PKT]
    if shallow_info:
        parts.append(pktline.encode("shallow-info\n"))
        parts += [pktline.encode(f"{kind} {oid}\n") for kind, oid in shallow_info]
        parts.append(pktline.DELIM_PKT)
    parts.append(pktline.encode("packfile\n"))
    return b"".join(parts)


def _band_one(data: bytes) -> bytes:
    return b"".join(
        pktline.encode(b"\x01" + data[start : start + _BAND_PAYLOAD])
        for start in range(0, len(data), _BAND_PAYLOAD)
    )


def _abandon(parser: PackStreamParser) -> None:
    """Let the parser delete its partial spool file after a failed stream."""
    try:
        parser.finish()
    except ArtifactFSError:
        pass


async def _send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
