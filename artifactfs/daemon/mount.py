"""One mount, from start to unmount: the composition root of the daemon.

Start-up order matters for the promise that ``mount`` returns fast: open the
remote, fetch the tip blobless (or reuse the local gitdir), publish the tree
through FUSE, prepare the git index, then report ready. Everything else (blob
hydration, the rest of the history, following HEAD) runs in the background of
an already usable mount.

:func:`run_mount` opens the remote and the base tree; :class:`Mount` then
builds every service of the mount once, and runs them until unmount. The work
itself lives with the modules that own it: :mod:`~artifactfs.daemon.gitindex`
(git's index), :mod:`~artifactfs.daemon.headfollow` (following HEAD),
:mod:`~artifactfs.daemon.commands` (control requests) and
:mod:`~artifactfs.snapshot.pathspec` (prefetch matching).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from artifactfs.daemon import control
from artifactfs.daemon.commands import ControlCommands
from artifactfs.daemon.gitindex import IndexKeeper
from artifactfs.daemon.gitserve import GitService
from artifactfs.daemon.headfollow import HeadFollower
from artifactfs.daemon.notify import report_progress
from artifactfs.daemon.recovery import detach_stale_mount, is_mounted, is_stale_mount
from artifactfs.daemon.startup import (
    BlobStream,
    complete_history,
    create_gitdir,
    fetch_branch_tips,
    history_available,
    resolve_wanted,
)
from artifactfs.daemon.submodules import NestedMounts, submodules_of
from artifactfs.errors import ArtifactFSError, MountpointError
from artifactfs.fs.operations import Operations
from artifactfs.hydrator.hydrator import BlobUnavailableError, Hydrator
from artifactfs.hydrator.priority import Classifier, PriorityClass, PriorityRule, builtin_class
from artifactfs.hydrator.profile import (
    PROFILE_WINDOW,
    ProfileRecorder,
    ProfileStore,
    decode_profile,
    encode_profile,
)
from artifactfs.hydrator.settings import HydrationSettings
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
from artifactfs.state import (
    MountState,
    Owner,
    RuntimeRecord,
    StateRoot,
    StateRootError,
    free_bytes,
    owner_of,
    private_dir,
    reachable_by,
    state_owner,
    write_private_file,
)
from artifactfs.status import MountStatus, ProfileReport
from artifactfs.store.blobcache import BlobCache
from artifactfs.store.gitdir import GitDir
from artifactfs.store.loose import LooseBlobFile
from artifactfs.store.tier import S3Tier, TierError, TierLocation
from artifactfs.worktree.bridge import install_bridge
from artifactfs.worktree.fsmonitor import git_version, install_hook, journal_token

log = logging.getLogger(__name__)

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


@dataclass
class MountOptions:
    remote: RemoteURL
    mountpoint: Path
    root: Path
    ref: str | None = None
    hydration: HydrationSettings = field(default_factory=HydrationSettings)
    priority_rules: tuple[PriorityRule, ...] = ()
    allow_other: bool = False
    fuse_tasks: int = 64
    metrics_address: tuple[str, int] | None = None
    history_depth: int | None = None
    """Commits of history to keep per branch and tag (``--depth``); None for all."""
    owner: tuple[int, int] | None = None
    """(uid, gid) owning the base tree; the daemon's own if None."""
    blob_store: TierLocation | None = None
    """The shared tier (``--blob-store s3://BUCKET/PREFIX``), or None."""
    recurse_submodules: bool = False
    """Mount each submodule as a nested mount of its own (``--recurse-submodules``)."""


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


@dataclass(frozen=True)
class MountBase:
    """The mount's gitdir and the tree it starts with."""

    gitdir: GitDir
    trees: TreeCache
    snapshot: Snapshot
    fresh: bool
    """The gitdir was created now (not reused), so git keeps no index for it yet."""
    tip_blobs: BlobStream | None = None
    """The rest of the tip's pack when the remote has no filter, until the hydrator takes it."""


async def run_mount(
    options: MountOptions, on_ready: ReadyCallback, on_progress: ProgressCallback | None = None
) -> None:
    """Open the remote and the base tree, build the mount, and serve it until unmount."""
    started_at = time.time()

    def progress(line: str) -> None:
        log.debug("start-up: %s", line)
        if on_progress is not None:
            on_progress(line)

    state = StateRoot(options.root)
    mount_dir = state.mount_dir(options.mountpoint, options.remote.redacted())
    private_dir(mount_dir)
    phases = _PhaseTimer()
    owner = git_owner(options)
    if owner is None:
        cache = BlobCache(state.blob_cache_dir)
    else:
        state.open_for_owner(MountState(mount_dir))
        cache = BlobCache(state.blob_cache_for(owner), owner, scratch=state.blob_cache_dir / "tmp")
    cache.clean_tmp()
    progress(f"connecting to {options.remote.redacted()}")
    async with await open_remote(options.remote) as session, contextlib.AsyncExitStack() as streams:
        phases.mark("remote opened")
        base = await prepare_gitdir(session, options, mount_dir, owner, cache, streams, progress)
        phases.mark("tree ready")
        mount = Mount(options, state, mount_dir, session, cache, base, started_at, progress)
        await mount.serve(on_ready, phases)


def git_owner(options: MountOptions) -> Owner | None:
    """The owner given with ``--uid``/``--gid`` when a root daemon keeps the git state for them.

    Only if that user can reach the state root at all: else its git could not
    use the gitdir whatever its owner, and the state stays the daemon's.
    """
    if options.owner is None:
        return None
    owner = state_owner(*options.owner)
    if owner is not None and not reachable_by(options.root, owner):
        log.warning(
            "uid %d cannot reach the state root %s (a directory above it is closed to it): "
            "its git will not work in the mount",
            owner.uid,
            options.root,
        )
        return None
    return owner


def check_gitdir_owner(gitdir: GitDir, mount_dir: Path) -> None:
    """Refuse a kept gitdir that belongs to another user than this mount's git state would."""
    try:
        kept = owner_of(gitdir.path)
    except FileNotFoundError:
        return
    kept_uid = os.geteuid() if kept is None else kept.uid
    wanted_uid = os.geteuid() if gitdir.owner is None else gitdir.owner.uid
    if kept_uid != wanted_uid:
        how = "without --uid" if kept is None else f"with --uid {kept_uid}"
        raise StateRootError(
            f"the state of this mount ({mount_dir}) belongs to uid {kept_uid}, not {wanted_uid}:"
            f" mount it {how}, or remove that directory to start afresh"
        )


async def prepare_gitdir(
    session: RemoteSession,
    options: MountOptions,
    mount_dir: Path,
    owner: Owner | None,
    cache: BlobCache,
    streams: contextlib.AsyncExitStack,
    progress: ProgressCallback,
) -> MountBase:
    """Reuse the local gitdir (keeping the user's HEAD), or create it, as ``owner``'s when given.

    A remote without filter sends the tip's blobs after its trees: that stream stays open in
    ``streams`` and waits in :attr:`MountBase.tip_blobs` for the hydrator."""
    gitdir = GitDir(MountState(mount_dir).gitdir, owner)
    check_gitdir_owner(gitdir, mount_dir)
    commit = gitdir.head_oid() if gitdir.exists() else None
    if commit is not None and gitdir.has_object(commit):
        trees = TreeCache(gitdir.read_tree)
        snapshot = Snapshot(commit, gitdir.commit_tree(commit), trees)
        log.info("reusing local state at %s (HEAD %s)", gitdir.path, commit)
        progress(f"reusing the local trees (HEAD {commit[:12]})")
        return MountBase(gitdir, trees, snapshot, fresh=False)
    progress("listing refs")
    refs = await session.ls_refs(["HEAD", "refs/heads/", "refs/tags/"])
    resolved = await resolve_wanted(session, refs, options.ref)
    progress(f"fetching trees of {resolved.commit[:12]}")
    gitdir, tip = await create_gitdir(
        session,
        gitdir.path,
        options.remote.redacted(),
        resolved,
        refs,
        spool_dir=cache.tmp_dir,
        streams=streams,
        owner=owner,
    )
    progress(f"received {len(tip.trees)} trees")
    tip_trees = tip.trees
    created = gitdir

    def read_tree(oid: str) -> bytes:
        raw = tip_trees.get(oid)
        return raw if raw is not None else created.read_tree(oid)

    trees = TreeCache(read_tree)
    snapshot = Snapshot(tip.commit, tip.root_tree, trees)
    write_private_file(
        MountState(mount_dir).description,
        json.dumps(
            {
                "remote": options.remote.redacted(),
                "ref": options.ref,
                "commit": tip.commit,
                "branch": resolved.branch,
                "mountpoint": str(options.mountpoint),
            }
        ).encode(),
    )
    return MountBase(gitdir, trees, snapshot, fresh=True, tip_blobs=tip.blobs)


class Mount:
    """Everything one running mount owns, built once: the composition root."""

    def __init__(
        self,
        options: MountOptions,
        state: StateRoot,
        mount_dir: Path,
        session: RemoteSession,
        cache: BlobCache,
        base: MountBase,
        started_at: float,
        progress: ProgressCallback,
    ) -> None:
        self.options = options
        self.state = state
        self.mount_dir = mount_dir
        self.session = session
        self.gitdir = gitdir = base.gitdir
        self.git_owner: Owner | None = gitdir.owner
        """Whom the gitdir, journal and blob cache belong to when not the daemon's user (see ``state``)."""
        self.fresh = base.fresh
        self.state_name = "starting"
        self.read_only = False
        self.started_at = started_at
        self._progress = progress
        self._shutdown = trio.Event()
        self._history_fetched = False
        self._tip_blobs = base.tip_blobs
        self.cache = cache
        gitdir.use_alternate(cache.objects_dir)  # git reads hydrated blobs where the mount keeps them
        gitdir.remove_stale_temporaries()
        self.profiles = ProfileStore(options.root)
        self.profile_key = ProfileStore.key(options.remote.redacted())
        self._profile_followed = 0
        self.tier: S3Tier | None = None
        """The shared tier, when the mount has one (``--blob-store``)."""
        self.hydrator = self._hydrator(session, cache, gitdir, base.snapshot)
        self.overlay = self._open_overlay(gitdir)
        publish_token = journal_token(self.overlay.journal.path)  # changes from here on reach git
        install_bridge(gitdir, options.remote, state.socket_path(options.mountpoint))
        self.git_service = GitService(session, self.hydrator, cache, options.remote, gitdir)
        self.view = OverlayView(self.overlay, base.snapshot, options.owner)
        gitfile = f"gitdir: {gitdir.path}\n".encode()
        self.lfs = LfsFiles(
            self.hydrator,
            cache,
            LfsObjectStore(state.blob_cache_for(self.git_owner), self.git_owner),
            gitdir.path,
            Classifier(options.priority_rules),
            options.remote.url if options.remote.kind == "http" else None,
            session.credential,
            self.git_owner,
        )
        self.operations = Operations(self.view, base.snapshot, self.hydrator, self.lfs, gitfile, mount_dir)
        self.head = HeadFollower(gitdir, base.trees, base.snapshot, self.view, self.operations, self.hydrator)
        self.index = IndexKeeper(
            options.mountpoint,
            options.hydration.mode,
            gitdir,
            self.hydrator,
            self.view,
            self.operations,
            self.head,
            self.lfs,
            publish_token,
        )
        self.hydrator.on_size_corrected = self.index.size_corrected
        self.commands = ControlCommands(
            self.status, self.request_shutdown, self.head, self.hydrator, self.lfs, self.git_service
        )
        self.nested = NestedMounts(
            options.mountpoint,
            options.root,
            ["--hydrate", options.hydration.mode, *(["--allow-other"] if options.allow_other else [])],
        )

    # ------------------------------------------------------------- main

    async def serve(self, on_ready: ReadyCallback, phases: _PhaseTimer) -> None:
        options = self.options
        session = self.session
        gitdir = self.gitdir
        overlay = self.overlay
        git_service = self.git_service
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
                    control.serve, streams={"upload-pack": git_service.upload_pack}, owner=self.git_owner
                )
                await nursery.start(
                    serve_control, self.state.socket_path(options.mountpoint), self.commands.handle
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
                    f"ready: {options.mountpoint} at {self.head.snapshot.commit_oid[:12]} "
                    f"({time.time() - self.started_at:.1f}s)"
                )
                on_ready()
                phases.mark("ready")
                nursery.start_soon(self.hydrator.track, self.head.snapshot)
                self.hydrator.start_background(PriorityClass.CONFIG)
                # git waits on the .git file until the index matches the mount (see Operations.open).
                try:
                    await self.index.prepare(self.fresh)
                except (ArtifactFSError, OSError) as error:  # a full disk, too: the mount stays a mount
                    log.error("could not prepare the git index (%s); git status will re-read files", error)
                finally:
                    self.operations.release_gitfile()
                if not self.read_only:
                    overlay.arm_reserve()  # after the start-up writes, which may have needed its room
                phases.mark("index prepared")
                nursery.start_soon(self.index.correct_sizes)
                log.info(
                    "mounted %s at %s (%s); start-up: %s",
                    options.remote.redacted(),
                    options.mountpoint,
                    self.head.snapshot.commit_oid,
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
                        log.info("the remote has no filter: history stays at depth 1 (git fetch --deepen)")
                    git_service.tips_local.set()
                if not self.read_only:  # reconciling writes the overlay
                    nursery.start_soon(self.head.run)
                nursery.start_soon(self._watch_mountpoint)
                if self.tier is not None and options.hydration.mode == "background":
                    nursery.start_soon(self._publish_to_tier, self.tier, self.head.snapshot)
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

    def _hydrator(
        self, session: RemoteSession, cache: BlobCache, gitdir: GitDir, snapshot: Snapshot
    ) -> Hydrator:
        """The hydrator and its chain of blob sources: the local cache, the shared tier if any, the origin."""
        options = self.options
        chain: list[BlobSource] = [CacheSource(cache)]
        if options.blob_store is not None:
            self.tier = S3Tier(options.blob_store, cache)
            self.tier.use_tree(snapshot.root_tree_oid)
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

    async def _follow_profile(self) -> None:
        """Queue the paths earlier mounts of this repository read first, above the classes.

        The local profile wins; without one, the tier's (what the fleet's
        agents read). Paths no longer in the tree are skipped.
        """
        snapshot = self.head.snapshot
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
            entry = snapshot.entry(path)
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
        recorder = self.hydrator.profile
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
        while True:
            await self.hydrator.wait_for_classes(PriorityClass.BINARY)
            if self.hydrator.status().failed_blobs:
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

    def _open_overlay(self, gitdir: GitDir) -> OverlayStore:
        """Open the overlay and point git's fsmonitor at its journal.

        A remount with less than :data:`WRITABLE_MINIMUM` free (the overlay's
        reserve included) opens it read-only and mounts read-only (writes get
        EROFS) instead of failing; a state root too full even for that is one
        clear error.
        """
        directory = MountState(self.mount_dir).overlay
        try:
            if (directory / "overlay.db").exists() and space_for_writing(directory) < WRITABLE_MINIMUM:
                overlay = OverlayStore(directory, read_only=True, journal_reader=self.git_owner)
                self.read_only = True
                log.warning(
                    "only %d KiB free in the state root %s: mounting read-only; free some space "
                    "there and mount again to write",
                    free_bytes(directory) // 1024,
                    self.options.root,
                )
                return overlay
            overlay = OverlayStore(directory, journal_reader=self.git_owner)
            hook = install_hook(
                gitdir.path,
                overlay.journal.path,
                overlay.journal.previous_path,
                git_version=git_version(),
                owner=gitdir.owner,
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
        root = self.head.snapshot.children("") or {}
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
        snapshot = self.head.snapshot
        entry = (snapshot.children("") or {}).get(".gitmodules")
        gitmodules = None
        if entry is not None and entry.kind is EntryKind.FILE:
            try:
                with LooseBlobFile.open(await self.hydrator.ensure(entry.oid, path=".gitmodules")) as blob:
                    gitmodules = blob.read_all()
            except (BlobUnavailableError, OSError) as error:
                log.warning("cannot read .gitmodules (%s): submodules stay placeholders", error)
        mounted = await self.nested.mount_all(submodules_of(snapshot, gitmodules, self.options.remote))
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
        await fetch_branch_tips(session, gitdir, self.hydrator.health)
        self.git_service.tips_local.set()
        with trio.move_on_after(HISTORY_DEFERRAL_CAP):
            await self.hydrator.wait_for_classes(PriorityClass.SOURCE)
        await complete_history(session, gitdir, self.hydrator.health, self.options.history_depth)
        self._history_fetched = True

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

    def status(self) -> MountStatus:
        return MountStatus(
            pid=os.getpid(),
            state=self.state_name,
            read_only=self.read_only,
            remote=self.options.remote.redacted(),
            mountpoint=str(self.options.mountpoint),
            head=self.head.snapshot.commit_oid,
            gitdir=str(self.gitdir.path),
            uptime_seconds=round(time.time() - self.started_at, 1),
            history_complete=self._history_fetched or not self.gitdir.shallow_commits(),
            history_depth=self.options.history_depth,
            history_shallow=not history_available(self.session),
            hydration=self.hydrator.status(),
            tier=self.tier.status() if self.tier is not None else None,
            profile=ProfileReport(
                enabled=self.hydrator.profile is not None,
                followed_paths=self._profile_followed,
                recorded_paths=len(self.hydrator.profile.paths) if self.hydrator.profile else 0,
            ),
            git=self.git_service.status(),
            fuse=self.operations.stats(),
            lfs=self.lfs.status(),
            submodules=dict(self.nested.states),
        )


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
