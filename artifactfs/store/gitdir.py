"""The real Git directory behind a mount: a partial clone stock git understands.

ArtifactFS writes objects here only as promisor packs (through
``git index-pack``, the fastest indexer) and writes refs, ``HEAD`` and
``shallow`` directly. Users' git commands in the mount use this directory
through the ``.git`` file at the mount root; nothing here is served by FUSE.

What ArtifactFS writes here is owner-only (:mod:`artifactfs.state`), and
``core.sharedRepository`` makes git's own writes owner-only as well.

Each pack is indexed in a quarantine object directory of its own
(``objects/incoming-artifactfs-*``, the way git's receive-pack does it) and
moved into ``objects/pack`` only once complete, so a fetch that fails or is
aborted leaves nothing behind: its quarantine, with whatever temporary files
``git index-pack`` wrote there, is deleted at once.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from dulwich.config import ConfigFile
from dulwich.object_store import DiskObjectStore
from dulwich.objects import ObjectID

from artifactfs.errors import CorruptObjectError
from artifactfs.objects import ObjectType, commit_tree
from artifactfs.state import GIT_SHARED_REPOSITORY, private_dir, write_private_file

log = logging.getLogger(__name__)

_QUARANTINE_PREFIX = "incoming-artifactfs-"
_PACK_FILE_SUFFIXES = (".promisor", ".pack", ".rev", ".idx")
"""Moved out of quarantine in this order: the index last, since it makes git and dulwich see the pack."""

_CONFIG_TEMPLATE = """\
[core]
\trepositoryformatversion = 1
\tfilemode = true
\tbare = false
\tlogallrefupdates = true
\tsymlinks = true
\tcheckStat = minimal
\ttrustctime = false
\tuntrackedCache = true
\tfsmonitorHookVersion = 2
\tsharedRepository = {shared}
[gc]
\tauto = 0
[maintenance]
\tauto = false
[fetch]
\twriteCommitGraph = false
[remote "origin"]
\turl = {url}
\tfetch = +refs/heads/*:refs/remotes/origin/*
\tpromisor = true
\tpartialclonefilter = blob:none
"""


def _quote_config_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class GitDir:
    """A partial-clone gitdir at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._objects: DiskObjectStore | None = None

    @classmethod
    def create(cls, path: Path, remote_url: str) -> GitDir:
        """Create the gitdir atomically: it either exists complete or not at all.

        ``remote_url`` must already be free of credentials.
        """
        private_dir(path.parent)
        staging = Path(tempfile.mkdtemp(prefix=".gitdir-", dir=path.parent))  # mkdtemp makes it 0700
        try:
            for sub in (
                "objects/pack",
                "objects/info",
                "refs/heads",
                "refs/tags",
                "refs/remotes/origin",
                "info",
                "hooks",
            ):
                private_dir(staging / sub)
            write_private_file(staging / "HEAD", b"ref: refs/heads/main\n")
            config = _CONFIG_TEMPLATE.format(
                url=_quote_config_value(remote_url), shared=GIT_SHARED_REPOSITORY
            )
            write_private_file(staging / "config", config.encode())
            write_private_file(staging / "description", b"ArtifactFS mount\n")
            os.rename(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(path)

    def set_config(self, section: str, name: str, value: str, *, subsection: str | None = None) -> None:
        """Set one config value (written atomically, and only if it changes)."""
        path = self.path / "config"
        config = ConfigFile.from_path(str(path))
        key = (section.encode(),) if subsection is None else (section.encode(), subsection.encode())
        try:
            if config.get(key, name.encode()) == value.encode():
                return
        except KeyError:
            pass
        config.set(key, name.encode(), value.encode())
        self._write_config(config)

    def set_config_values(
        self, section: str, name: str, values: list[str], *, subsection: str | None = None
    ) -> None:
        """Make ``values``, in order, the only values of a multi-valued key (written atomically, only if they change)."""
        path = self.path / "config"
        config = ConfigFile.from_path(str(path))
        key = (section.encode(),) if subsection is None else (section.encode(), subsection.encode())
        wanted = [value.encode() for value in values]
        try:
            if list(config.get_multivar(key, name.encode())) == wanted:
                return
        except KeyError:
            pass
        if config.has_section(key):
            config[key].pop(name.encode(), None)
        for value in wanted:
            config.add(key, name.encode(), value)
        self._write_config(config)

    def _write_config(self, config: ConfigFile) -> None:
        serialised = io.BytesIO()
        config.write_to_file(serialised)
        write_private_file(self.path / "config", serialised.getvalue())

    def exists(self) -> bool:
        return (self.path / "HEAD").is_file() and (self.path / "objects").is_dir()

    # ------------------------------------------------------------- objects

    @property
    def objects(self) -> DiskObjectStore:
        if self._objects is None:
            self._objects = DiskObjectStore(str(self.path / "objects"))
        return self._objects

    def read_object(self, oid: str) -> tuple[int, bytes]:
        """Raw (type number, content) of an object, rescanning packs added since the last read."""
        key = ObjectID(oid.encode("ascii"))
        try:
            return self.objects.get_raw(key)
        except KeyError:
            self._objects = None
            return self.objects.get_raw(key)

    def read_tree(self, oid: str) -> bytes:
        type_num, raw = self.read_object(oid)
        if type_num != ObjectType.TREE:
            raise CorruptObjectError(f"object {oid} is not a tree")
        return raw

    def commit_tree(self, commit_oid: str) -> str:
        type_num, raw = self.read_object(commit_oid)
        if type_num != ObjectType.COMMIT:
            raise CorruptObjectError(f"object {commit_oid} is not a commit")
        return commit_tree(raw)

    def has_object(self, oid: str) -> bool:
        try:
            self.read_object(oid)
        except KeyError:
            return False
        return True

    @asynccontextmanager
    async def promisor_pack_writer(self) -> AsyncIterator[PackSink]:
        """Stream a pack into ``git index-pack``; on clean exit it is a promisor pack of this gitdir.

        If the body raises or the indexer fails, it is killed and its
        quarantine deleted: nothing is added and nothing is left behind.
        """
        objects = self.path / "objects"
        quarantine = Path(tempfile.mkdtemp(prefix=_QUARANTINE_PREFIX, dir=objects))  # 0700
        try:
            private_dir(quarantine / "pack")
            # The indexer writes into the quarantine and reads existing objects (delta bases) through it.
            environment = {
                **os.environ,
                "GIT_OBJECT_DIRECTORY": str(quarantine),
                "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects),
            }
            process = await trio.lowlevel.open_process(
                ["git", "--git-dir", str(self.path), "index-pack", "--stdin", "--promisor=artifactfs"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment,
            )
            sink = PackSink(process)
            try:
                yield sink
            except BaseException:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
                    await sink.close_streams()
                raise
            with trio.CancelScope(shield=True):
                name = await sink.finish()
            for suffix in _PACK_FILE_SUFFIXES:
                part = quarantine / "pack" / f"pack-{name}{suffix}"
                if part.exists():
                    os.replace(part, objects / "pack" / part.name)
        finally:
            shutil.rmtree(quarantine, ignore_errors=True)

    def use_alternate(self, objects_dir: Path) -> None:
        """Let git find objects in ``objects_dir`` too: the blob cache, where hydrated blobs live."""
        alternates = f"{objects_dir}\n"
        path = self.path / "objects" / "info" / "alternates"
        if not path.exists() or path.read_text() != alternates:
            self._write_file_atomically("objects/info/alternates", alternates)
            self._objects = None

    def remove_stale_temporaries(self) -> int:
        """Delete the quarantines (and half-written packs) a killed daemon left behind (start-up only).

        A fetch that fails while the daemon runs cleans up after itself (see
        :meth:`promisor_pack_writer`); this catches what a killed daemon could not.
        """
        removed = 0
        for leftover in (self.path / "objects").glob(f"{_QUARANTINE_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
            removed += 1
        for leftover in (self.path / "objects" / "pack").glob("tmp_*"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    # ------------------------------------------------------------- refs

    def _write_file_atomically(self, relative: str, content: str) -> None:
        target = self.path / relative
        private_dir(target.parent)
        write_private_file(target, content.encode())

    def update_ref(self, name: str, oid: str) -> None:
        self._write_file_atomically(name, oid + "\n")

    def set_head(self, branch: str | None, oid: str) -> None:
        """Point HEAD at ``refs/heads/<branch>`` (created at ``oid``), or detach it at ``oid``."""
        if branch is None:
            self._write_file_atomically("HEAD", oid + "\n")
            return
        self.update_ref(f"refs/heads/{branch}", oid)
        self._write_file_atomically("HEAD", f"ref: refs/heads/{branch}\n")

    def set_upstream(self, branch: str) -> None:
        """Make ``branch`` track ``origin/<branch>``, as a clone does."""
        self.set_config("branch", "remote", "origin", subsection=branch)
        self.set_config("branch", "merge", f"refs/heads/{branch}", subsection=branch)

    def head_oid(self) -> str | None:
        """The commit HEAD resolves to, or None if it resolves to nothing yet."""
        try:
            head = (self.path / "HEAD").read_text().strip()
        except FileNotFoundError:
            return None
        if not head.startswith("ref: "):
            return head or None
        return self.resolve_ref(head[5:])

    def resolve_ref(self, name: str) -> str | None:
        loose = self.path / name
        try:
            return loose.read_text().strip() or None
        except (FileNotFoundError, IsADirectoryError):
            pass
        try:
            packed = (self.path / "packed-refs").read_text()
        except FileNotFoundError:
            return None
        for line in packed.splitlines():
            if line.endswith(" " + name) and not line.startswith(("#", "^")):
                return line.split(" ", 1)[0]
        return None

    def git_busy(self) -> bool:
        """True while a git command holds the index or HEAD lock."""
        return (self.path / "index.lock").exists() or (self.path / "HEAD.lock").exists()

    def shallow_commits(self) -> list[str]:
        try:
            return (self.path / "shallow").read_text().split()
        except FileNotFoundError:
            return []

    def write_shallow(self, oids: list[str]) -> None:
        if oids:
            self._write_file_atomically("shallow", "".join(f"{oid}\n" for oid in sorted(set(oids))))
        else:
            (self.path / "shallow").unlink(missing_ok=True)


class PackSink:
    """The open stdin of a running ``git index-pack --stdin``."""

    def __init__(self, process: trio.Process) -> None:
        self._process = process

    async def write(self, chunk: bytes) -> None:
        assert self._process.stdin is not None
        try:
            await self._process.stdin.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # index-pack stopped reading: it rejected the pack (checked in finish()).
            raise CorruptObjectError("git index-pack rejected the pack being received") from None

    async def close_streams(self) -> None:
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            if stream is not None:
                await stream.aclose()

    async def finish(self) -> str:
        """Close the input, wait for the index, and return the pack's name."""
        assert self._process.stdin is not None and self._process.stdout is not None
        assert self._process.stderr is not None
        await self._process.stdin.aclose()
        output = bytearray()
        errors = bytearray()
        async with trio.open_nursery() as nursery:

            async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
                while chunk := await stream.receive_some():
                    into.extend(chunk)

            nursery.start_soon(drain, self._process.stdout, output)
            nursery.start_soon(drain, self._process.stderr, errors)
        status = await self._process.wait()
        await self.close_streams()
        if status != 0:
            reason = "; ".join(
                line.strip() for line in errors.decode(errors="replace").splitlines() if line.strip()
            )
            raise CorruptObjectError(f"git index-pack rejected the pack: {reason}")
        return output.decode().split()[-1]
