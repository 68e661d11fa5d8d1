"""One mount, from start to unmount.

Start-up order matters for the promise that ``mount`` returns fast: open the
remote, fetch the tip blobless (or reuse the local gitdir), publish the tree
through FUSE, prepare the git index, then report ready. Everything else (blob
hydration, the rest of the history, following HEAD) runs in the background of
an already usable mount.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import logging
import os
import signal
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from artifactfs.daemon import control
from artifactfs.daemon.gitserve import GitService
from artifactfs.daemon.notify import report_progress
from artifactfs.daemon.recovery import detach_stale_mount, is_mounted, is_stale_mount
from artifactfs.daemon.startup import (
    BlobStream,
    ResolvedRef,
    complete_history,
    create_gitdir,
    fetch_branch_tips,
    history_available,
    resolve_wanted,
)
from artifactfs.daemon.submodules import NestedMounts, submodules_of
from artifactfs.errors import ArtifactFSError, MountpointError
from artifactfs.fs.operations import BASE_MTIME_NS, Operations
from artifactfs.hydrator.hydrator import BlobUnavailableError, HydrationSettings, Hydrator
from artifactfs.hydrator.priority import Classifier, PriorityClass, PriorityRule, builtin_class
from artifactfs.hydrator.profile import (
    PROFILE_WINDOW,
    ProfileRecorder,
    ProfileStore,
    decode_profile,
    encode_profile,
)
from artifactfs.hydrator.sources import BlobSource, CacheSource, OriginSource, SourceChain
from artifactfs.lfs.files import LfsFiles
from artifactfs.lfs.objects import LfsObjectStore
from artifactfs.overlay.errors import is_no_space
from artifactfs.overlay.store import WRITABLE_MINIMUM, OverlayStore, space_for_writing
from artifactfs.overlay.view import OverlayView
from artifactfs.remote import RemoteSession, RemoteURL, open_remote
from artifactfs.retry import HISTORY_BACKOFF
from artifactfs.snapshot.entries import EntryKind
from artifactfs.snapshot.tree import Snapshot, TreeCache
from artifactfs.state import RuntimeRecord, StateRoot, free_bytes, private_dir, write_private_file
from artifactfs.store.blobcache import BlobCache, blob_id_of_file
from artifactfs.store.gitdir import GitDir
from artifactfs.store.loose import LooseBlobFile
from artifactfs.store.tier import S3Tier, TierError, TierLocation
from artifactfs.worktree.bridge import install_bridge
from artifactfs.worktree.fsmonitor import git_version, install_hook, journal_token
from artifactfs.worktree.index import IndexLockedError, correct_index_sizes
from artifactfs.worktree.prepared import TreeListing, list_tree, write_prepared_index
from artifactfs.worktree.untracked import converting_paths, gitignore_id

log = logging.getLogger(__name__)

HEAD_POLL_INTERVAL = 0.1
INDEX_CORRECTION_INTERVAL = 0.5
MOUNT_WATCH_INTERVAL = 1.0
HISTORY_DEFERRAL_CAP = 15.0
"""Seconds the history fetch waits for manifests, config and source to hydrate."""
TIER_DEMAND_TIMEOUT = 2.0
"""Seconds a blocked read waits for the shared tier before the origin is asked."""
TIER_BATCH_TIMEOUT = 30.0
"""Seconds a background batch waits for the shared tier before the origin is asked."""
PUBLISH_POLL = 1.0
"""Seconds between checks that every blob of the mounted tree is here before publishing it."""
PUBLISH_ATTEMPTS = 3
"""Tries at writing a hydrated tree through to the tier before leaving it to the next machine."""
SUBMODULE_UNMOUNT_WAIT = 60.0
"""Seconds shutdown waits for nested submodule mounts to unmount."""
INDEX_SIZE_WAIT = 2.0
"""Seconds the prepared index waits for object-info sizes; git never needs them while nothing changed."""


@dataclass
class MountOptions:
    remote: RemoteURL
    mountpoint: Path
    root: Path
    ref: str | None = None
    hydration: HydrationSettings = field(default_factory=HydrationSettings)
    priority_rules: tuple[PriorityRule, ...] = ()
    allow_other: bool = False
    owner: tuple[int, int] | None = None
    """(uid, gid) owning the base tree; the daemon's own if None."""
    fuse_tasks: int = 64
    metrics_address: tuple[str, int] | None = None
    history_depth: int | None = None
    """Commits of history to keep per branch and tag (``--depth``); None for all."""
    blob_store: TierLocation | None = None
    """The shared tier (``--blob-store s3://BUCKET/PREFIX``), or None."""
    recurse_submodules: bool = False


ReadyCallback = Callable[[], None]
ProgressCallback = Callable[[str], None]
"""Told each start-up phase as one short line (``mount`` shows them on a terminal)."""


class _PhaseTimer:
    """Start-up phase durations for the log: where did the time to mount go."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._phases: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self._phases.append((phase, now - self._last))
        self._last = now

    def summary(self) -> str:
        return ", ".join(f"{phase} +{seconds * 1000:.0f}ms" for phase, seconds in self._phases)


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


class Mount:
    """Everything one running mount owns."""

    def __init__(self, options: MountOptions, on_progress: ProgressCallback | None = None) -> None:
        self.options = options
        self._on_progress = on_progress
        self.state = StateRoot(options.root)
        self.mount_dir = self.state.mount_dir(options.mountpoint, options.remote.redacted())
        self.session: RemoteSession | None = None
        self.gitdir: GitDir | None = None
        self.hydrator: Hydrator | None = None
        self.tier: S3Tier | None = None
        self._origin: OriginSource | None = None
        self.profiles = ProfileStore(options.root)
        self.profile_key = ProfileStore.key(options.remote.redacted())
        self._profile_followed = 0
        self.lfs: LfsFiles | None = None
        self.git_service: GitService | None = None
        self.operations: Operations | None = None
        self.view: OverlayView | None = None
        self.snapshot: Snapshot | None = None
        self.trees: TreeCache | None = None
        self.state_name = "starting"
        self.read_only = False
        self.started_at = time.time()
        self._shutdown = trio.Event()
        self._publish_token: str | None = None
        self._index_sizes: dict[str, int] = {}
        """Verified sizes that differ from what the index may hold (see _size_corrected)."""
        self._index_prepared = False
        self._index_sizes_failing = False
        self._history_fetched = False
        self._tip_blobs: BlobStream | None = None
        """The rest of the tip's pack when the remote has no filter, until the hydrator takes it."""
        self.nested = NestedMounts(
            options.mountpoint,
            options.root,
            ["--hydrate", options.hydration.mode, *(["--allow-other"] if options.allow_other else [])],
        )

    # ------------------------------------------------------------- main

    def _progress(self, line: str) -> None:
        log.debug("start-up: %s", line)
        if self._on_progress is not None:
            self._on_progress(line)

    async def run(self, on_ready: ReadyCallback) -> None:
        options = self.options
        private_dir(self.mount_dir)
        phases = _PhaseTimer()
        cache = BlobCache(self.state.blob_cache_dir)
        cache.clean_tmp()
        self._progress(f"connecting to {options.remote.redacted()}")
        async with await open_remote(options.remote) as session, contextlib.AsyncExitStack() as streams:
            self.session = session
            phases.mark("remote opened")
            resolved = await self._prepare_gitdir(session, cache, streams)
            phases.mark("tree ready")
            gitdir = self.gitdir
            assert gitdir is not None
            gitdir.use_alternate(cache.objects_dir)  # git reads hydrated blobs where the mount keeps them
            gitdir.remove_stale_temporaries()
            self.hydrator = self._hydrator(session, cache, gitdir)
            overlay = self._open_overlay(gitdir)
            self._publish_token = journal_token(overlay.journal.path)  # changes from here on reach git
            install_bridge(gitdir, options.remote, self.state.socket_path(options.mountpoint))
            git_service = self.git_service = GitService(session, self.hydrator, cache, options.remote, gitdir)
            assert self.snapshot is not None
            self.view = OverlayView(overlay, self.snapshot, options.owner)
            gitfile = f"gitdir: {gitdir.path}\n".encode()
            self.lfs = LfsFiles(
                self.hydrator,
                cache,
                LfsObjectStore(self.state.blob_cache_dir),
                gitdir.path,
                Classifier(options.priority_rules),
                options.remote.url if options.remote.kind == "http" else None,
                session.credential,
            )
            self.operations = Operations(
                self.view, self.snapshot, self.hydrator, self.lfs, gitfile, self.mount_dir
            )
            self.hydrator.on_size_corrected = self._size_corrected
            fuse_options = set(pyfuse3.default_options) | {
                "fsname=artifactfs",
                "subtype=artifactfs",
                "default_permissions",
            }
            if options.allow_other:
                fuse_options.add("allow_other")
            if self.read_only:
                fuse_options.add("ro")
            try:
                pyfuse3.init(self.operations, str(options.mountpoint), fuse_options)
            except RuntimeError as error:
                raise MountpointError(f"cannot mount on {options.mountpoint}: {error}") from None
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_signals)
                    nursery.start_soon(self._fuse_main)
                    await nursery.start(self.hydrator.run)
                    if self._tip_blobs is not None:  # a server without filter: the tip's blobs still arrive
                        blobs, self._tip_blobs = self._tip_blobs, None
                        assert self._origin is not None
                        nursery.start_soon(
                            self.hydrator.take_stream, self._origin, blobs.parser, blobs.arrived, blobs.chunks
                        )
                    if self.profiles.enabled(self.profile_key):
                        self.hydrator.profile = ProfileRecorder()
                        nursery.start_soon(self._follow_profile)
                        nursery.start_soon(self._save_profile_after_window)
                    await nursery.start(self.lfs.run)
                    if options.hydration.mode == "background":
                        self._fetch_root_manifests()
                    serve_control = functools.partial(
                        control.serve, streams={"upload-pack": git_service.upload_pack}
                    )
                    await nursery.start(
                        serve_control, self.state.socket_path(options.mountpoint), self._control
                    )
                    if options.metrics_address is not None:
                        from artifactfs.daemon.metrics import serve_metrics  # optional dependency

                        await nursery.start(serve_metrics, options.metrics_address, self.status)
                    phases.mark("fuse started")
                    # Requests on our own mount: abandoned on cancel, since the loop serving them stops too.
                    await trio.to_thread.run_sync(os.listdir, options.mountpoint, abandon_on_cancel=True)
                    self._publish_runtime()
                    self.state_name = "mounted"
                    self._progress(
                        f"ready: {options.mountpoint} at {self.snapshot.commit_oid[:12]} "
                        f"({time.time() - self.started_at:.1f}s)"
                    )
                    on_ready()
                    phases.mark("ready")
                    nursery.start_soon(self.hydrator.track, self.snapshot)
                    self.hydrator.start_background(PriorityClass.CONFIG)
                    # git waits on the .git file until the index matches the mount (see Operations.open).
                    try:
                        await self._prepare_index(resolved is not None)
                    except (ArtifactFSError, OSError) as error:  # a full disk, too: the mount stays a mount
                        log.error(
                            "could not prepare the git index (%s); git status will re-read files", error
                        )
                    finally:
                        self.operations.release_gitfile()
                    if not self.read_only:
                        overlay.arm_reserve()  # after the start-up writes, which may have needed its room
                    phases.mark("index prepared")
                    nursery.start_soon(self._correct_index_sizes)
                    log.info(
                        "mounted %s at %s (%s); start-up: %s",
                        options.remote.redacted(),
                        options.mountpoint,
                        self.snapshot.commit_oid,
                        phases.summary(),
                    )
                    # After the index: its object-info answers give every blob's size, and size decides
                    # the binary class, so the other classes open once classes are final.
                    self.hydrator.start_background()
                    nursery.start_soon(report_progress, self.status)
                    if gitdir.shallow_commits() and history_available(session):
                        nursery.start_soon(self._complete_history_after_source, session, gitdir)
                    else:
                        if gitdir.shallow_commits():
                            log.info(
                                "the remote has no filter: history stays at depth 1 (git fetch --deepen)"
                            )
                        git_service.tips_local.set()
                    if not self.read_only:  # reconciling writes the overlay
                        nursery.start_soon(self._follow_head)
                    nursery.start_soon(self._watch_mountpoint)
                    if self.tier is not None and options.hydration.mode == "background":
                        nursery.start_soon(self._publish_to_tier, self.tier, self.snapshot)
                    if options.recurse_submodules:
                        nursery.start_soon(self._mount_submodules)
                    await self._shutdown.wait()
                    with trio.move_on_after(SUBMODULE_UNMOUNT_WAIT):
                        await self.nested.unmount_all()  # while this mount still serves their mountpoints
                    nursery.cancel_scope.cancel()
            finally:
                self.state_name = "unmounting"
                self.state.withdraw_runtime(options.mountpoint)
                with trio.CancelScope(shield=True):
                    pyfuse3.close(unmount=True)
                    await self._save_profile()
                log.info("unmounted %s", options.mountpoint)

    def _hydrator(self, session: RemoteSession, cache: BlobCache, gitdir: GitDir) -> Hydrator:
        """The hydrator and its chain of blob sources: the local cache, the shared tier if any, the origin."""
        options = self.options
        assert self.snapshot is not None
        chain: list[BlobSource] = [CacheSource(cache)]
        if options.blob_store is not None:
            self.tier = S3Tier(options.blob_store, cache)
            self.tier.use_tree(self.snapshot.root_tree_oid)
            chain.append(self.tier)
        self._origin = OriginSource(session, cache, options.hydration.max_bandwidth)
        chain.append(self._origin)
        sources = SourceChain(
            chain,
            optional_timeout=lambda urgent: TIER_DEMAND_TIMEOUT if urgent else TIER_BATCH_TIMEOUT,
        )
        return Hydrator(
            session, sources, cache, gitdir, Classifier(options.priority_rules), options.hydration
        )

    def _open_overlay(self, gitdir: GitDir) -> OverlayStore:
        """Open the overlay and point git's fsmonitor at its journal.

        A remount with less than :data:`WRITABLE_MINIMUM` free (the overlay's
        reserve included) opens it read-only and mounts read-only (writes get
        EROFS) instead of failing; a state root too full even for that is one
        clear error.
        """
        directory = self.mount_dir / "overlay"
        try:
            if (directory / "overlay.db").exists() and space_for_writing(directory) < WRITABLE_MINIMUM:
                overlay = OverlayStore(directory, read_only=True)
                self.read_only = True
                log.warning(
                    "only %d KiB free in the state root %s: mounting read-only; free some space "
                    "there and mount again to write",
                    free_bytes(directory) // 1024,
                    self.options.root,
                )
                return overlay
            overlay = OverlayStore(directory)
            hook = install_hook(
                gitdir.path, overlay.journal.path, overlay.journal.previous_path, git_version=git_version()
            )
            gitdir.set_config("core", "fsmonitor", str(hook))
            return overlay
        except Exception as error:
            if is_no_space(error):
                raise self._no_space_error() from None
            raise

    def _no_space_error(self) -> ArtifactFSError:
        free = free_bytes(self.mount_dir) // 1024
        return ArtifactFSError(
            f"no space left in the state root {self.options.root} ({free} KiB free); "
            "free some space there and mount again"
        )

    def _fetch_root_manifests(self) -> None:
        """Start fetching the top-level manifests during start-up: what agents read first."""
        assert self.snapshot is not None and self.hydrator is not None
        root = self.snapshot.children("") or {}
        self.hydrator.prefetch_paths(
            [
                (name, entry.oid)
                for name, entry in root.items()
                if entry.kind is EntryKind.FILE and builtin_class(name) is PriorityClass.MANIFEST
            ]
        )

    async def _fuse_main(self) -> None:
        await pyfuse3.main(min_tasks=4, max_tasks=self.options.fuse_tasks)
        log.info("the kernel ended the FUSE session (external unmount)")
        self._shutdown.set()

    async def _mount_submodules(self) -> None:
        """Mount every submodule of the tree as a nested mount (see :mod:`artifactfs.daemon.submodules`)."""
        assert self.snapshot is not None and self.hydrator is not None
        entry = (self.snapshot.children("") or {}).get(".gitmodules")
        gitmodules = None
        if entry is not None and entry.kind is EntryKind.FILE:
            try:
                with LooseBlobFile.open(await self.hydrator.ensure(entry.oid, path=".gitmodules")) as blob:
                    gitmodules = blob.read_all()
            except (BlobUnavailableError, OSError) as error:
                log.warning("cannot read .gitmodules (%s): submodules stay placeholders", error)
        mounted = await self.nested.mount_all(submodules_of(self.snapshot, gitmodules, self.options.remote))
        assert self.gitdir is not None
        for submodule in mounted:  # what `git submodule init` records, as a recursive clone has it
            self.gitdir.set_config("submodule", "url", submodule.url, subsection=submodule.name)
            self.gitdir.set_config("submodule", "active", "true", subsection=submodule.name)

    async def _complete_history_after_source(self, session: RemoteSession, gitdir: GitDir) -> None:
        """Fetch every branch's tip at once, then the rest of the history once what agents read first
        has arrived.

        A long history is one large pack that competes with the first blob
        batches for the server and both cores; readers need manifests and
        source before they need ``git log``. The wait is capped so history
        still arrives early on very large trees.
        """
        assert self.hydrator is not None and self.git_service is not None
        await fetch_branch_tips(session, gitdir, self.hydrator.health)
        self.git_service.tips_local.set()
        with trio.move_on_after(HISTORY_DEFERRAL_CAP):
            await self.hydrator.wait_for_classes(PriorityClass.SOURCE)
        await complete_history(session, gitdir, self.hydrator.health, self.options.history_depth)
        self._history_fetched = True

    async def _follow_profile(self) -> None:
        """Queue the paths earlier mounts of this repository read first, above the classes.

        The local profile wins; without one, the tier's (what the fleet's
        agents read). Paths no longer in the tree are skipped.
        """
        assert self.hydrator is not None and self.snapshot is not None
        paths = self.profiles.load(self.profile_key)
        if paths is None and self.tier is not None:
            with trio.move_on_after(TIER_DEMAND_TIMEOUT):
                try:
                    data = await self.tier.get_profile(self.profile_key)
                except TierError as error:
                    log.info("no prefetch profile from the tier: %s", error)
                    data = None
                paths = decode_profile(data) if data is not None else None
        blobs = []
        for path in paths or ():
            entry = self.snapshot.entry(path)
            if entry is not None and entry.kind in (EntryKind.FILE, EntryKind.SYMLINK):
                blobs.append((path, entry.oid))
        if blobs:
            log.info("prefetching %d paths from the learned profile first", len(blobs))
            self.hydrator.prefetch_paths(blobs)
        self._profile_followed = len(blobs)

    async def _save_profile_after_window(self) -> None:
        await trio.sleep(PROFILE_WINDOW)
        await self._save_profile()

    async def _save_profile(self) -> None:
        """Keep what this mount read first, locally and in the tier if any (reading nothing keeps the old)."""
        recorder = self.hydrator.profile if self.hydrator is not None else None
        if recorder is None or not recorder.paths:
            return
        paths = recorder.paths
        try:
            self.profiles.save(self.profile_key, paths)
        except OSError as error:
            log.warning("could not save the prefetch profile: %s", error)
        if self.tier is not None:
            with trio.move_on_after(TIER_DEMAND_TIMEOUT):
                try:
                    await self.tier.put_profile(self.profile_key, encode_profile(paths))
                except TierError as error:
                    log.warning("could not share the prefetch profile through the tier: %s", error)

    async def _publish_to_tier(self, tier: S3Tier, snapshot: Snapshot) -> None:
        """Once every blob of the mounted tree is here, verified, write it through to the shared tier.

        Only a complete tree is published (its index must name every blob),
        and only if no other machine published it first. A failing tier is
        logged; the mount does not depend on it.
        """
        assert self.hydrator is not None
        while True:
            await self.hydrator.wait_for_classes(PriorityClass.BINARY)
            if self.hydrator.status()["failed_blobs"]:
                log.info("not publishing tree %s to the tier: some blobs failed", snapshot.root_tree_oid)
                return
            groups, pending = self.hydrator.blobs_by_class(snapshot)
            if not pending:
                break
            await trio.sleep(PUBLISH_POLL)  # the tree is still being registered or fetched
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await tier.publish(snapshot.root_tree_oid, groups)
                return
            except (TierError, ArtifactFSError, OSError) as error:
                log.warning(
                    "could not publish tree %s to the tier (attempt %d of %d): %s",
                    snapshot.root_tree_oid,
                    attempt,
                    PUBLISH_ATTEMPTS,
                    error,
                )
            await trio.sleep(HISTORY_BACKOFF.delay(attempt))

    def _size_corrected(self, oid: str, size: int) -> None:
        """A blob's verified size differs from the one reported: tell the kernel, git's index and fsmonitor."""
        assert self.snapshot is not None and self.operations is not None and self.view is not None
        paths = [path for path, entry in self.snapshot.walk() if entry.oid == oid]
        self.operations.attributes_changed(paths)
        try:
            for path in paths:
                self.view.note_modified(path)
        except (
            ArtifactFSError,
            OSError,
        ) as error:  # a full disk, a read-only overlay: the kernel is fixed at least
            log.warning("could not journal the corrected size of %s: %s", oid, error)
        self._index_sizes[oid] = size
        self._apply_index_sizes()  # at once (rare, and a few ms): the next git status must see it

    def _apply_index_sizes(self) -> None:
        """Write corrected sizes into git's index, once it is prepared and no git command holds it."""
        assert self.gitdir is not None
        if not self._index_sizes or not self._index_prepared or self.gitdir.git_busy():
            return
        pending = dict(self._index_sizes)
        try:
            correct_index_sizes(self.gitdir.path, pending)
        except IndexLockedError:
            return
        except OSError as error:  # a full disk: try again later (said once, not every round)
            (log.debug if self._index_sizes_failing else log.warning)(
                "could not correct sizes in git's index: %s", error
            )
            self._index_sizes_failing = True
            return
        self._index_sizes_failing = False
        for oid in pending:
            self._index_sizes.pop(oid, None)

    async def _correct_index_sizes(self) -> None:
        """Retry corrections that found the index busy (or not yet prepared)."""
        self._index_prepared = True
        while True:
            self._apply_index_sizes()
            await trio.sleep(INDEX_CORRECTION_INTERVAL)

    async def _watch_mountpoint(self) -> None:
        """Exit when the mount disappears without us (``umount -l``, ``fusermount3 -u -z``).

        A lazy unmount detaches the tree at once but keeps the FUSE session
        open until the last reference goes, so the main loop alone would keep
        an orphaned daemon running.
        """
        while True:
            await trio.sleep(MOUNT_WATCH_INTERVAL)
            if not is_mounted(self.options.mountpoint):
                log.info("%s was unmounted from outside; stopping", self.options.mountpoint)
                self._shutdown.set()
                return

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for number in signals:
                log.info("received %s, unmounting", signal.Signals(number).name)
                self._shutdown.set()
                return

    def request_shutdown(self) -> None:
        self._shutdown.set()

    # ------------------------------------------------------------- start-up steps

    async def _prepare_gitdir(
        self, session: RemoteSession, cache: BlobCache, streams: contextlib.AsyncExitStack
    ) -> ResolvedRef | None:
        """Reuse the local gitdir (keeping the user's HEAD), or create it; returns the ref if created.

        A remote without filter sends the tip's blobs after its trees: that stream stays open in
        ``streams`` and waits in ``_tip_blobs`` for the hydrator."""
        gitdir = GitDir(self.mount_dir / "gitdir")
        commit = gitdir.head_oid() if gitdir.exists() else None
        if commit is not None and gitdir.has_object(commit):
            self.gitdir = gitdir
            self.trees = TreeCache(gitdir.read_tree)
            self.snapshot = Snapshot(commit, gitdir.commit_tree(commit), self.trees)
            log.info("reusing local state at %s (HEAD %s)", gitdir.path, commit)
            self._progress(f"reusing the local trees (HEAD {commit[:12]})")
            return None
        self._progress("listing refs")
        refs = await session.ls_refs(["HEAD", "refs/heads/", "refs/tags/"])
        resolved = await resolve_wanted(session, refs, self.options.ref)
        self._progress(f"fetching trees of {resolved.commit[:12]}")
        gitdir, tip = await create_gitdir(
            session,
            gitdir.path,
            self.options.remote.redacted(),
            resolved,
            refs,
            spool_dir=cache.tmp_dir,
            streams=streams,
        )
        self._progress(f"received {len(tip.trees)} trees")
        self.gitdir = gitdir
        self._tip_blobs = tip.blobs
        tip_trees = tip.trees

        def read_tree(oid: str) -> bytes:
            raw = tip_trees.get(oid)
            return raw if raw is not None else gitdir.read_tree(oid)

        self.trees = TreeCache(read_tree)
        self.snapshot = Snapshot(tip.commit, tip.root_tree, self.trees)
        write_private_file(
            self.mount_dir / "mount.json",
            json.dumps(
                {
                    "remote": self.options.remote.redacted(),
                    "ref": self.options.ref,
                    "commit": tip.commit,
                    "branch": resolved.branch,
                    "mountpoint": str(self.options.mountpoint),
                }
            ).encode(),
        )
        return resolved

    async def _prepare_index(self, fresh: bool) -> None:
        """Write an index git trusts at once (see :mod:`artifactfs.worktree.prepared`).

        Skipped when git already keeps an index for this gitdir. Runs after the
        mount is ready; nothing but git needs the index. Sizes come from
        object-info when the server offers it, for at most a short wait: an
        unknown size is written as 0 and status never looks at it.
        """
        gitdir = self.gitdir
        assert gitdir is not None and self.snapshot is not None and self.hydrator is not None
        assert self.view is not None and self._publish_token is not None
        if not fresh and (gitdir.path / "index").exists():
            return
        listing = await trio.to_thread.run_sync(list_tree, self.snapshot)
        blob_oids = listing.blob_oids()
        exclude_blobs = [
            (_join(directory, name), oid)
            for name, files in ((".gitignore", listing.gitignores), (".gitattributes", listing.gitattributes))
            for directory, oid in files.items()
        ]
        if self.options.hydration.mode == "none":
            # git reads every .gitignore on every status: fetch them in one request, not one per read.
            # (Background hydration takes them early anyway, with the config class.)
            self.hydrator.prefetch_paths(exclude_blobs)
        if self.hydrator.object_info_available:
            with trio.move_on_after(INDEX_SIZE_WAIT):
                await self.hydrator.sizes(blob_oids, partial=True)
        gitignore_ids = await self._gitignore_ids(listing)
        sizes = {oid: size for oid in blob_oids if (size := self.hydrator.known_size(oid)) is not None}
        if self.lfs is not None:  # an LFS file shows its object, not its pointer blob
            sizes.update(await self.lfs.index_sizes(INDEX_SIZE_WAIT))
        changed = [row.path for row in self.view.rows()]
        await trio.to_thread.run_sync(
            functools.partial(
                write_prepared_index,
                listing,
                gitdir.path,
                self.options.mountpoint,
                mtime_ns=BASE_MTIME_NS,
                sizes=sizes,
                token=self._publish_token,
                changed=changed,
                gitignore_ids=gitignore_ids,
            )
        )

    async def _gitignore_ids(self, listing: TreeListing) -> dict[str, str]:
        """The id git will compute for each ``.gitignore`` (see :mod:`artifactfs.worktree.untracked`).

        Needs the ``.gitattributes`` blobs (git reads them from the gitdir,
        where the blob cache is an alternate), and the content of each
        ``.gitignore`` git converts; each is waited for briefly. A guess that
        turns out wrong only makes git list that directory's subtree once.
        """
        assert self.hydrator is not None and self.gitdir is not None and self.snapshot is not None
        if not listing.gitignores:
            return {}
        paths = {directory: _join(directory, ".gitignore") for directory in listing.gitignores}
        converted: set[str] = set()
        contents: dict[str, bytes] = {}
        with trio.move_on_after(INDEX_SIZE_WAIT):
            await self._hydrate_all(listing.gitattributes.values())
            try:
                # Abandoned on timeout: git may be waiting on a lazy fetch of a .gitattributes blob.
                converted = await trio.to_thread.run_sync(
                    functools.partial(
                        converting_paths,
                        self.gitdir.path,
                        self.snapshot.root_tree_oid,
                        sorted(paths.values()),
                    ),
                    abandon_on_cancel=True,
                )
            except ArtifactFSError as error:
                log.warning("cannot tell which .gitignore files git converts (%s); guessing none", error)
            for directory, oid in listing.gitignores.items():
                if paths[directory] in converted:
                    with contextlib.suppress(BlobUnavailableError, OSError, ValueError):  # then a guess
                        with LooseBlobFile.open(await self.hydrator.ensure(oid)) as blob:
                            contents[directory] = blob.read_all()
        return {
            directory: gitignore_id(oid, contents.get(directory), paths[directory] in converted)
            for directory, oid in listing.gitignores.items()
        }

    async def _hydrate_all(self, oids: Iterable[str]) -> None:
        """Wait until each blob is local or has failed; failures are the readers' to report."""
        assert self.hydrator is not None
        hydrator = self.hydrator

        async def one(oid: str) -> None:
            with contextlib.suppress(BlobUnavailableError):
                await hydrator.ensure(oid)

        async with trio.open_nursery() as nursery:
            for oid in oids:
                nursery.start_soon(one, oid)

    def _publish_runtime(self) -> None:
        try:
            self.state.publish_runtime(
                RuntimeRecord(
                    pid=os.getpid(),
                    mountpoint=str(self.options.mountpoint),
                    state_dir=str(self.mount_dir),
                    remote=self.options.remote.redacted(),
                    socket=str(self.state.socket_path(self.options.mountpoint)),
                )
            )
        except OSError as error:
            if is_no_space(error):
                raise self._no_space_error() from None
            raise

    # ------------------------------------------------------------- following HEAD

    async def _follow_head(self) -> None:
        """Publish the tree git moved HEAD to, once the git command that moved it is done."""
        gitdir = self.gitdir
        assert gitdir is not None and self.view is not None and self.operations is not None
        while True:
            await trio.sleep(HEAD_POLL_INTERVAL)
            assert self.snapshot is not None and self.trees is not None and self.hydrator is not None
            commit = gitdir.head_oid()
            if commit is None or commit == self.snapshot.commit_oid or gitdir.git_busy():
                continue
            try:
                tree = gitdir.commit_tree(commit)
            except KeyError:
                continue  # the commit object is not visible yet
            snapshot = Snapshot(commit, tree, self.trees)
            report = self.view.reconcile(
                snapshot, await self._hashed_data_files(), busy=self.operations.paths_open_for_writing()
            )
            self.snapshot = snapshot
            self.operations.publish(snapshot, retimed=report.retimed)
            log.info(
                "HEAD moved to %s: %d overlay entries dropped, %d converted, %d kept",
                commit,
                report.dropped,
                report.converted,
                report.kept,
            )
            await self.hydrator.track(snapshot, may_be_local=True)

    async def _hashed_data_files(self) -> Callable[[Path], str]:
        """Blob ids of the overlay data files, hashed in a worker thread, for :meth:`OverlayView.reconcile`.

        After a checkout there are thousands of them; hashing them on the event
        loop would hold every FUSE request. Ids computed while any file was
        opened or closed for writing, or truncated, are not trusted: those are
        hashed again during the reconcile.
        """
        assert self.view is not None and self.operations is not None
        operations = self.operations
        events = operations.write_events
        paths = self.view.data_paths()

        def hash_all() -> dict[Path, str]:
            hashes = {}
            for path in paths:
                with contextlib.suppress(OSError, ArtifactFSError):  # removed meanwhile: not reconciled
                    hashes[path] = blob_id_of_file(path)
            return hashes

        hashes = await trio.to_thread.run_sync(hash_all)
        if operations.write_events != events:
            hashes.clear()

        def blob_oid_of(path: Path) -> str:
            known = hashes.get(path)
            return known if known is not None else blob_id_of_file(path)

        return blob_oid_of

    # ------------------------------------------------------------- control

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return {"ok": True, **self.status()}
        if op == "unmount":
            self.request_shutdown()
            return {"ok": True, "pid": os.getpid()}
        if op == "prefetch":
            paths = request.get("paths")
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise ArtifactFSError("prefetch needs a list of paths")
            return {"ok": True, "boosted": self.prefetch(paths)}
        if op == "credential":
            assert self.git_service is not None
            return {"ok": True, **await self.git_service.credential(request)}
        if op == "record":
            assert self.hydrator is not None
            return {"ok": True, "record": [arrival.__dict__ for arrival in self.hydrator.record]}
        raise ArtifactFSError(f"unknown control operation {op!r}")

    def prefetch(self, pathspecs: list[str]) -> int:
        """Raise every blob under or matching ``pathspecs`` to the front of the queue.

        A pathspec that matches no file is an error (as in ``git add``), so a
        typo is not mistaken for blobs that are all local already.
        """
        assert self.snapshot is not None and self.hydrator is not None
        cleaned = [spec.strip("/") for spec in pathspecs]
        oids = []
        files: list[tuple[str, str]] = []
        unmatched = set(cleaned)
        for path, entry in self.snapshot.walk():
            if entry.kind not in (EntryKind.FILE, EntryKind.SYMLINK):
                continue
            for spec in cleaned:
                if not spec or path == spec or path.startswith(spec + "/") or fnmatch.fnmatchcase(path, spec):
                    oids.append(entry.oid)
                    files.append((path, entry.oid))
                    unmatched.discard(spec)
        if unmatched:
            raise ArtifactFSError(
                "no file in the mount matches " + ", ".join(repr(spec) for spec in sorted(unmatched))
            )
        if self.lfs is not None:
            self.lfs.prefetch(files)  # the objects of the LFS files among them
        return self.hydrator.boost(oids)

    def status(self) -> dict[str, Any]:
        assert self.snapshot is not None and self.hydrator is not None and self.gitdir is not None
        assert self.git_service is not None
        return {
            "pid": os.getpid(),
            "state": self.state_name,
            "read_only": self.read_only,
            "remote": self.options.remote.redacted(),
            "mountpoint": str(self.options.mountpoint),
            "head": self.snapshot.commit_oid,
            "gitdir": str(self.gitdir.path),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "history_complete": self._history_fetched or not self.gitdir.shallow_commits(),
            "history_depth": self.options.history_depth,
            "history_shallow": self.session is not None and not history_available(self.session),
            "hydration": self.hydrator.status(),
            "tier": self.tier.status() if self.tier is not None else None,
            "profile": {
                "enabled": self.hydrator.profile is not None,
                "followed_paths": self._profile_followed,
                "recorded_paths": len(self.hydrator.profile.paths) if self.hydrator.profile else 0,
            },
            "git": self.git_service.status(),
            "fuse": self.operations.stats() if self.operations else {},
            "lfs": self.lfs.status() if self.lfs else {},
            "submodules": dict(self.nested.states),
        }


def check_mountpoint(mountpoint: Path) -> None:
    """Refuse a mountpoint that is missing, not a directory, not empty or already mounted.

    A stale mount left by a daemon that died is detached first.
    """
    if is_stale_mount(mountpoint):
        detach_stale_mount(mountpoint)  # its daemon died; the state it left is reused as is
    try:
        info = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountpointError(f"mount directory {mountpoint} does not exist") from None
    except OSError as error:
        raise MountpointError(f"cannot use {mountpoint}: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise MountpointError(f"{mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountpointError(f"{mountpoint} is already a mount point")
    if os.listdir(mountpoint):
        raise MountpointError(f"mount directory {mountpoint} is not empty")
