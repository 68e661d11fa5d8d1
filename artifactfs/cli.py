"""The ``artifactfs`` command line.

Every failure ends in one line on stderr naming the problem and a non-zero
exit status. ``mount`` validates what it can in the calling process, then forks
the daemon and waits on a pipe until the daemon reports the tree is listable
(or why it is not); credentials therefore never travel through argv or the
environment of a child. The same pipe carries the start-up phases, which
``mount`` shows on a terminal. A mount that fails removes everything it
created: the mount directory and its state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from artifactfs.errors import ArtifactFSError, FuseUnavailableError, MountpointError, UsageError
from artifactfs.hydrator.settings import HYDRATION_MODES, HydrationSettings
from artifactfs.logs import (
    DEFAULT_LOG_FORMAT,
    DEFAULT_LOG_LEVEL,
    LOG_FORMATS,
    LOG_LEVELS,
    LogFormat,
    LogLevel,
)

if TYPE_CHECKING:
    from artifactfs.state import RuntimeRecord, StateRoot
    from artifactfs.store.tier import TierLocation

log = logging.getLogger("artifactfs")

_UNMOUNT_WAIT = 30.0
_SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"artifactfs: error: {message}", err=True)
    sys.exit(code)


def _scaled(cleaned: str) -> float:
    """``500k``, ``20m``, ``1.5g`` or a plain number as bytes; ValueError if it is none of those."""
    suffix = cleaned[-1:] if cleaned[-1:] in _SIZE_SUFFIXES else ""
    return float(cleaned[: len(cleaned) - len(suffix)]) * _SIZE_SUFFIXES[suffix]


def _parse_rate(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = _scaled(text.strip().lower().removesuffix("/s").removesuffix("b"))
    except ValueError:
        raise UsageError(f"cannot parse bandwidth {text!r} (examples: 500K, 20M)") from None
    if value <= 0:
        raise UsageError("bandwidth limit must be positive")
    return int(value)


def _mountpoint(path: str) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailableError("/dev/fuse is missing (load the fuse module or pass --device /dev/fuse)")
    if shutil.which("fusermount3") is None:
        raise FuseUnavailableError("fusermount3 is not installed (apt-get install fuse3)")


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ArtifactFSError as error:
            _fail(str(error))
        except OSError as error:  # e.g. a file of another user's state: still one line, no traceback
            _fail(f"{error.filename}: {error.strerror}" if error.filename else str(error.strerror or error))


def _state_root(root: str | None, *, create: bool = False) -> StateRoot:
    """The checked state root (``--root``, ``$ARTIFACTFS_ROOT`` or the default); see ``state.check_state_root``."""
    from artifactfs import state

    path = state.state_root(root)
    state.check_state_root(path, create=create)
    return state.StateRoot(path)


@click.group(cls=_Group)
@click.version_option(package_name="artifactfs")
def main() -> None:
    """Mount any Git remote as a lazily hydrated, writable working tree."""
    _scrub_command_line()


def _scrub_command_line() -> None:
    """Rewrite this process's command line without passwords (a remote URL may carry a token).

    ``ps`` and ``/proc/PID/cmdline`` show the arguments as given until they are
    rewritten, so this runs before any command does: a token is visible only
    while the interpreter starts.
    """
    from artifactfs.redaction import redact

    try:
        arguments = Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return
    shown = [argument.decode("utf-8", "surrogateescape") for argument in arguments]
    scrubbed = [redact(argument) for argument in shown]
    if scrubbed != shown:
        import setproctitle

        setproctitle.setproctitle(" ".join(scrubbed))


# --------------------------------------------------------------------- mount

_HYDRATION_DEFAULTS = HydrationSettings()
"""The mount options' defaults are the settings' own."""


@main.command()
@click.argument("remote")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--ref",
    "-b",
    "--branch",
    "ref",
    envvar="ARTIFACTFS_REF",
    help="Branch, tag or commit (a short id too) to mount (default: the remote's HEAD; env ARTIFACTFS_REF).",
)
@click.option(
    "--depth",
    type=click.IntRange(1),
    help="Fetch only this many commits of history per branch and tag (default: all, in the background).",
)
@click.option("-q", "--quiet", is_flag=True, help="Show no progress on a terminal.")
@click.option(
    "--root",
    envvar="ARTIFACTFS_ROOT",
    type=click.Path(file_okay=False, readable=False),
    help="State directory (default: platform data dir; env ARTIFACTFS_ROOT).",
)
@click.option("--foreground", is_flag=True, help="Stay attached; unmount on SIGINT/SIGTERM.")
@click.option(
    "--hydrate",
    type=click.Choice(HYDRATION_MODES),
    default=_HYDRATION_DEFAULTS.mode,
    show_default=True,
    help="Fetch every blob in the background, or only what is read.",
)
@click.option(
    "--connections",
    type=click.IntRange(1, 16),
    default=_HYDRATION_DEFAULTS.connections,
    show_default=True,
    help="Background fetch requests in flight at once.",
)
@click.option("--max-bandwidth", metavar="RATE", help="Cap fetch bandwidth, e.g. 20M (bytes per second).")
@click.option(
    "--read-timeout",
    type=click.FloatRange(0.1),
    default=_HYDRATION_DEFAULTS.read_timeout,
    show_default=True,
    help="Seconds a read waits for its blob before failing with EIO.",
)
@click.option(
    "--priority",
    "priority_rules",
    multiple=True,
    metavar="CLASS=GLOB",
    help="Put matching paths in a hydration class (repeatable).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file with a [priority] table (default: user config dir).",
)
@click.option(
    "--blob-store",
    metavar="s3://BUCKET/PREFIX",
    help="Shared blob tier on an S3-compatible store (AWS_* environment and config; needs artifactfs[s3]).",
)
@click.option(
    "--allow-other", is_flag=True, help="Let other users access the mount (needs user_allow_other)."
)
@click.option(
    "--uid",
    "owner_uid",
    type=click.IntRange(0),
    help="Owner of the checked-out tree (default: the mounting user).",
)
@click.option(
    "--gid",
    "owner_gid",
    type=click.IntRange(0),
    help="Group of the checked-out tree (default: the mounting user's group).",
)
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default=DEFAULT_LOG_FORMAT, show_default=True)
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default=DEFAULT_LOG_LEVEL, show_default=True)
@click.option(
    "--recurse-submodules",
    is_flag=True,
    help="Mount each submodule (http(s) URL) as a nested mount of its own, hydrated lazily too.",
)
@click.option(
    "--metrics-address",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (needs artifactfs[metrics]).",
)
def mount(
    remote: str,
    directory: str,
    ref: str | None,
    depth: int | None,
    quiet: bool,
    root: str | None,
    foreground: bool,
    hydrate: str,
    connections: int,
    max_bandwidth: str | None,
    read_timeout: float,
    priority_rules: tuple[str, ...],
    config_path: str | None,
    blob_store: str | None,
    allow_other: bool,
    owner_uid: int | None,
    owner_gid: int | None,
    log_format: LogFormat,
    log_level: LogLevel,
    recurse_submodules: bool,
    metrics_address: str | None,
) -> None:
    """Mount REMOTE (URL or path) at DIRECTORY (created if missing); return once the tree is visible."""
    from artifactfs import logs, state
    from artifactfs.daemon.mount import MountOptions, check_mountpoint
    from artifactfs.daemon.recovery import artifactfs_mounts, withdraw_dead_runtime
    from artifactfs.hydrator.priority import load_rules
    from artifactfs.remote.url import RemoteURL

    parsed_remote = RemoteURL.parse(remote)
    mountpoint = _mountpoint(directory)
    _check_fuse()
    metrics = _metrics_address(metrics_address)
    config_file = Path(config_path) if config_path else state.config_file()
    if config_path and not config_file.exists():
        raise UsageError(f"config file {config_file} does not exist")
    options = MountOptions(
        remote=parsed_remote,
        mountpoint=mountpoint,
        root=state.state_root(root),
        ref=ref,
        hydration=HydrationSettings(
            mode="background" if hydrate == "background" else "none",
            connections=connections,
            read_timeout=read_timeout,
            max_bandwidth=_parse_rate(max_bandwidth),
        ),
        priority_rules=load_rules(config_file, priority_rules),
        allow_other=allow_other,
        owner=(
            os.getuid() if owner_uid is None else owner_uid,
            os.getgid() if owner_gid is None else owner_gid,
        ),
        metrics_address=metrics,
        blob_store=_blob_store(config_file, blob_store),
        history_depth=depth,
        recurse_submodules=recurse_submodules,
    )
    _refuse_root_inside_a_mount(options.root, mountpoint, artifactfs_mounts())
    show_progress = not quiet and sys.stderr.isatty()
    made_mountpoint = state.Footprint([mountpoint], whole=False)
    planned = state.StateRoot(options.root)
    mount_dir = planned.mount_dir(mountpoint, parsed_remote.redacted())
    made_state = state.Footprint(
        [mount_dir, planned.blob_cache_dir, planned.owner_blob_caches_dir, planned.run_dir], whole=True
    )
    ready = False
    try:
        _create_mountpoint(mountpoint)
        check_mountpoint(mountpoint)
        state_root = _state_root(root, create=True)
        withdraw_dead_runtime(state_root, mountpoint)
        state.private_dir(mount_dir)
        if foreground:
            logs.configure(level=log_level, log_format=log_format)

            def on_ready() -> None:
                nonlocal ready
                ready = True
                _notify_systemd_ready()

            _run_daemon(options, on_ready, _show_progress if show_progress else None)
            return
        log_file = state.MountState(mount_dir).log_file
        log_fd = state.open_private(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        _start_daemon(options, log_file, log_fd, log_level, log_format, show_progress)
        ready = True
    finally:
        if not ready:
            made_state.remove()
            made_mountpoint.remove()


def _refuse_root_inside_a_mount(root: Path, mountpoint: Path, mounts: list[Path]) -> None:
    """A state root inside a mount of ours would have the daemon serve its own writes: a deadlock."""
    resolved = Path(os.path.realpath(root))
    for outer in (mountpoint, *mounts):
        if resolved == outer or outer in resolved.parents:
            where = "the mount directory" if outer == mountpoint else "the ArtifactFS mount"
            raise UsageError(f"the state root {root} is inside {where} {outer}; pass a --root outside it")


def _create_mountpoint(mountpoint: Path) -> None:
    """Create a missing mount directory (and its parents), as ``git clone`` does."""
    try:
        os.lstat(mountpoint)
    except FileNotFoundError:
        try:
            mountpoint.mkdir(parents=True)
        except OSError as error:
            raise MountpointError(
                f"cannot create the mount directory {mountpoint}: {error.strerror}"
            ) from None
    except OSError:
        pass  # a dead mount, for instance: check_mountpoint says what it is


def _show_progress(line: str) -> None:
    click.echo(f"artifactfs: {line}", err=True)


def _blob_store(config_file: Path, flag: str | None) -> TierLocation | None:
    import importlib.util

    from artifactfs.store.tier import configured_location

    location = configured_location(config_file, flag)
    if location is not None and importlib.util.find_spec("boto3") is None:
        raise UsageError("--blob-store needs boto3: pip install 'artifactfs[s3]'")
    return location


def _metrics_address(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    import importlib.util

    if importlib.util.find_spec("prometheus_client") is None:
        raise UsageError("--metrics-address needs prometheus_client: pip install 'artifactfs[metrics]'")
    from artifactfs.daemon.metrics import parse_address

    return parse_address(text)


def _notify_systemd_ready() -> None:
    from artifactfs.daemon.notify import notify

    notify("READY=1\nSTATUS=mounted")


def _run_daemon(
    options: Any, on_ready: Callable[[], None], on_progress: Callable[[str], None] | None = None
) -> None:
    import setproctitle
    import trio

    from artifactfs import state
    from artifactfs.daemon.mount import run_mount

    # The command line may hold a URL with a token; replace it so /proc/PID/cmdline shows none.
    setproctitle.setproctitle(f"artifactfs mount {options.remote.redacted()} {options.mountpoint}")
    state.use_private_umask()
    try:
        trio.run(run_mount, options, on_ready, on_progress)
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from group


def _start_daemon(
    options: Any, log_file: Path, log_fd: int, log_level: LogLevel, log_format: LogFormat, show_progress: bool
) -> None:
    """Fork the daemon (its stdout and stderr go to ``log_fd``) and wait until it reports ready.

    The daemon writes ``progress: <phase>`` lines, then ``ok`` or ``error: <why>``
    on a pipe. Raises if it failed; then it has exited, so its files can go.
    """
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _daemon_child(options, log_fd, log_level, log_format, write_end)
    os.close(write_end)
    os.close(log_fd)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode(errors="replace").strip()
                if line == "ok":
                    return
                if line.startswith("progress: "):
                    if show_progress:
                        _show_progress(line[len("progress: ") :])
                elif line.startswith("error: "):
                    os.waitpid(pid, 0)
                    raise ArtifactFSError(line[len("error: ") :])
    except BaseException as error:
        if not isinstance(error, ArtifactFSError):  # interrupted: the daemon must not outlive the attempt
            _stop_daemon(pid, options.mountpoint)
        raise
    os.waitpid(pid, 0)
    raise ArtifactFSError(f"the daemon exited during start-up: {_last_line(log_file)}")


def _stop_daemon(pid: int, mountpoint: Path) -> None:
    """End a daemon that is still starting, and detach the mount it may have made."""
    from artifactfs.daemon.recovery import is_mounted

    try:
        os.kill(pid, 15)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    if is_mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def _last_line(log_file: Path) -> str:
    """The daemon's last words, for a failure it could not report (the log goes with the failed state)."""
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return _one_line(lines[-1]) if lines else "no log"


def _daemon_child(
    options: Any, log_fd: int, log_level: LogLevel, log_format: LogFormat, ready_fd: int
) -> NoReturn:
    from artifactfs import logs

    code = 0
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(null)
        os.close(log_fd)
        logs.configure(level=log_level, log_format=log_format, stream=sys.stderr)
        ready_stream = os.fdopen(ready_fd, "wb", buffering=0)

        def on_ready() -> None:
            ready_stream.write(b"ok\n")
            ready_stream.close()

        def on_progress(line: str) -> None:
            with contextlib.suppress(OSError):  # `mount` was interrupted: it stops us anyway
                ready_stream.write(f"progress: {_one_line(line)}\n".encode())

        try:
            _run_daemon(options, on_ready, on_progress)
        except ArtifactFSError as error:
            log.error("%s", _one_line(str(error)))
            if not ready_stream.closed:
                ready_stream.write(f"error: {_one_line(str(error))}\n".encode())
            code = 1
        except BaseException as error:  # the parent must always hear why
            summary = _one_line(f"internal error: {type(error).__name__}: {error}")
            innermost = traceback.extract_tb(error.__traceback__)[-1:]
            where = "".join(f" (at {frame.filename}:{frame.lineno} in {frame.name})" for frame in innermost)
            log.error("daemon failed: %s%s", summary, where)  # one line; the whole traceback at debug level
            log.debug("traceback of the daemon's failure", exc_info=error)
            if not ready_stream.closed:
                ready_stream.write(f"error: {summary}\n".encode())
            code = 2
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _one_line(message: str) -> str:
    """An error message as the single line the CLI promises (a message may quote multi-line output)."""
    return " ".join(message.split())


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception worth reporting from a nursery's group: an ArtifactFSError if there is one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop(0)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    return next((leaf for leaf in leaves if isinstance(leaf, ArtifactFSError)), leaves[0])


# --------------------------------------------------------------------- control commands


def _root_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--root",
        envvar="ARTIFACTFS_ROOT",
        type=click.Path(file_okay=False, readable=False),
        help="State directory (default: platform data dir; env ARTIFACTFS_ROOT).",
    )(function)


def _running(state_root: StateRoot) -> list[RuntimeRecord]:
    """Running mounts: those of ``state_root``, then the machine-wide registry's (whatever their root)."""
    from artifactfs import state
    from artifactfs.daemon.recovery import live_registered

    found = {record.mountpoint: record for record in state_root.runtimes() if state.pid_alive(record.pid)}
    for record in live_registered():
        found.setdefault(record.mountpoint, record)
    return list(found.values())


def _running_at(state_root: StateRoot, mountpoint: Path) -> RuntimeRecord | None:
    return next((record for record in _running(state_root) if record.mountpoint == str(mountpoint)), None)


def _find_mount(directory: str | None, root: str | None) -> tuple[RuntimeRecord, Path]:
    """The runtime record of the mount at DIRECTORY, or of the one containing the cwd."""
    state_root = _state_root(root)
    if directory is not None:
        mountpoint = _mountpoint(directory)
        record = _running_at(state_root, mountpoint)
        if record is None:
            raise MountpointError(f"{mountpoint} is not a running ArtifactFS mount")
        return record, mountpoint
    running = _running(state_root)
    cwd = Path.cwd()
    for record in running:
        if cwd == Path(record.mountpoint) or Path(record.mountpoint) in cwd.parents:
            return record, Path(record.mountpoint)
    if len(running) == 1:
        return running[0], Path(running[0].mountpoint)
    if not running:
        raise MountpointError("no ArtifactFS mount is running")
    raise UsageError("several mounts are running; name one: " + ", ".join(r.mountpoint for r in running))


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--forget", is_flag=True, help="Also remove the mount's state (see `forget`).")
@_root_option
def unmount(directory: str, forget: bool, root: str | None) -> None:
    """Unmount DIRECTORY and stop its daemon (works from any shell).

    The state stays for a fast remount (your commits and edits included) unless --forget.
    """
    from artifactfs import state
    from artifactfs.daemon import control
    from artifactfs.daemon.recovery import is_mounted

    mountpoint = _mountpoint(directory)
    state_root = _state_root(root)
    record = _running_at(state_root, mountpoint)
    if record is not None:
        if record.root:
            state_root = state.StateRoot(Path(record.root))
        try:
            control.request(Path(record.socket), "unmount")
        except control.ControlError:
            os.kill(record.pid, 15)
        deadline = time.monotonic() + _UNMOUNT_WAIT
        while state.pid_alive(record.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if state.pid_alive(record.pid):
            raise MountpointError(f"the daemon for {mountpoint} did not stop within {_UNMOUNT_WAIT:g}s")
    elif is_mounted(mountpoint):
        result = subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, text=True)
        state_root.withdraw_runtime(mountpoint)
        if result.returncode != 0:
            raise MountpointError(f"cannot unmount {mountpoint}: {result.stderr.strip()}")
    elif not forget:
        state_root.withdraw_runtime(mountpoint)
        raise MountpointError(f"{mountpoint} is not mounted")
    if forget:
        _forget(state_root, mountpoint)


@main.command(name="forget")
@click.argument("directory", type=click.Path(file_okay=False))
@_root_option
def forget_command(directory: str, root: str | None) -> None:
    """Remove the state kept for DIRECTORY (gitdir, overlay, log) after an unmount.

    Unsaved edits and unpushed commits in it are lost. The shared blob cache
    stays (see `gc`).
    """
    _forget(_state_root(root), _mountpoint(directory))


def _forget(state_root: StateRoot, mountpoint: Path) -> None:
    """Remove every state directory kept for ``mountpoint``; refused while it is mounted."""
    from artifactfs.daemon.recovery import is_mounted

    if is_mounted(mountpoint):
        raise MountpointError(f"{mountpoint} is mounted; unmount it first (or: artifactfs unmount --forget)")
    directories = state_root.state_dirs(mountpoint)
    if not directories:
        raise MountpointError(
            f"no state kept for {mountpoint} under {state_root.root} (pass the --root it was mounted with)"
        )
    state_root.withdraw_runtime(mountpoint)
    for directory in directories:
        shutil.rmtree(directory)
    noun = "directory" if len(directories) == 1 else "directories"
    click.echo(f"forgot {mountpoint}: removed {len(directories)} state {noun}")


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option(
    "--watch",
    is_flag=True,
    help="Redraw a live progress display until hydration completes; exit 1 if blobs failed.",
)
@_root_option
def status(directory: str | None, as_json: bool, watch: bool, root: str | None) -> None:
    """Show a mount's state and hydration progress."""
    from artifactfs.daemon import control

    record, _ = _find_mount(directory, root)
    if as_json:
        answer = control.request(Path(record.socket), "status")
        answer.pop("ok", None)
        click.echo(json.dumps(answer, indent=2))
        return
    from artifactfs.status import MountStatus
    from artifactfs.statusview import render, watch_status

    if not watch:
        click.echo(render(MountStatus.from_json(control.request(Path(record.socket), "status"))))
        return
    final = watch_status(lambda: MountStatus.from_json(control.request(Path(record.socket), "status")))
    failed = final.hydration.failed_blobs if final is not None else 0
    if failed:
        _fail(f"hydration finished with {failed} blobs failed (see `artifactfs status` for the errors)")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("pathspecs", nargs=-1, required=True)
@_root_option
def prefetch(directory: str, pathspecs: tuple[str, ...], root: str | None) -> None:
    """Move the blobs under PATHSPECS (paths or globs) to the front of the queue.

    A pathspec that matches no file is an error.
    """
    from artifactfs.daemon import control

    record, _ = _find_mount(directory, root)
    answer = control.request(Path(record.socket), "prefetch", paths=list(pathspecs))
    click.echo(f"queued {answer['boosted']} blobs first")


@main.command()
@click.argument("action", type=click.Choice(["show", "off", "on", "clear"]))
@click.argument("remote")
@_root_option
def profile(action: str, remote: str, root: str | None) -> None:
    """Show, turn off, turn on or clear REMOTE's learned prefetch profile.

    A mount records the files it reads in its first minutes; the next mount of
    the same remote fetches those first. The profile is kept in the state
    root (and shared through --blob-store when one is used).
    """
    from artifactfs.hydrator.profile import ProfileStore
    from artifactfs.remote.url import RemoteURL

    state_root = _state_root(root, create=action in ("off", "on"))
    store = ProfileStore(state_root.root)
    key = store.key(RemoteURL.parse(remote).redacted())
    if action == "show":
        paths = store.load(key)
        click.echo(f"learned prefetch: {'on' if store.enabled(key) else 'off'}")
        click.echo(f"{len(paths or [])} paths")
        for path in paths or []:
            click.echo(path)
    elif action == "clear":
        click.echo("cleared" if store.clear(key) else "no profile")
    else:
        store.set_enabled(key, action == "on")
        click.echo(f"learned prefetch {action}")


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_root_option
def list_mounts(as_json: bool, root: str | None) -> None:
    """List every mount on this machine (whatever its --root), and dead ones of this root."""
    from artifactfs import state
    from artifactfs.daemon import control
    from artifactfs.daemon.recovery import live_registered

    records = {record.mountpoint: record for record in _state_root(root).runtimes()}
    for record in live_registered():
        records.setdefault(record.mountpoint, record)
    rows = []
    for record in records.values():
        row: dict[str, Any] = {
            "mountpoint": record.mountpoint,
            "pid": record.pid,
            "remote": record.remote,
            "root": record.root or None,
        }
        if not state.pid_alive(record.pid):
            row["state"] = "dead"
        else:
            try:
                answer = control.request(Path(record.socket), "status", timeout=2.0)
                row["state"] = answer["state"]
                hydration = answer["hydration"]
                row["hydrated"] = f"{hydration['hydrated_blobs']}/{hydration['total_blobs']}"
            except control.ControlError:
                row["state"] = "unresponsive"
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no mounts")
        return
    for row in rows:
        click.echo(
            f"{row['mountpoint']}\t{row['state']}\tpid {row['pid']}\t{row.get('hydrated', '-')}\t{row['remote']}"
        )


# --------------------------------------------------------------------- maintenance


def _parse_size(text: str) -> int:
    try:
        value = _scaled(text.strip().lower().removesuffix("b").removesuffix("i"))
    except ValueError:
        raise UsageError(f"cannot parse size {text!r} (examples: 500M, 10G)") from None
    if value < 0:
        raise UsageError("size must not be negative")
    return int(value)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@_root_option
def fsck(directory: str, root: str | None) -> None:
    """Check DIRECTORY's state (mounted or not), repair what is safe; exit 1 on damage left."""
    from artifactfs.maintenance.fsck import fsck as check

    report = check(_state_root(root), _mountpoint(directory))
    click.echo(f"fsck {report.mountpoint}: state in {', '.join(map(str, report.state_dirs))}")
    for finding in report.findings:
        click.echo(f"  {finding.severity:<9} {finding.message}")
    repaired, damaged = report.count("repaired"), report.count("damaged")
    click.echo(
        f"result: {'clean' if report.clean else 'DAMAGED'} ({repaired} repaired, {damaged} not repairable)"
    )
    if not report.clean:
        sys.exit(1)


@main.command()
@click.option(
    "--max-size",
    default="10G",
    show_default=True,
    envvar="ARTIFACTFS_CACHE_MAX_SIZE",
    metavar="SIZE",
    help="Bound for the shared blob cache, e.g. 500M (env ARTIFACTFS_CACHE_MAX_SIZE).",
)
@click.option(
    "--keep-recent",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Never evict blobs used this recently.",
)
@_root_option
def gc(max_size: str, keep_recent: float, root: str | None) -> None:
    """Evict least recently used blobs until the blob cache fits in --max-size."""
    from artifactfs.maintenance.gc import collect
    from artifactfs.statusview import human_bytes
    from artifactfs.store.blobcache import BlobCache

    caches = [BlobCache(path, owner) for path, owner in _state_root(root, create=True).blob_caches()]
    result = collect(caches, _parse_size(max_size), keep_recent=keep_recent)
    click.echo(
        f"blob cache: {human_bytes(result.before_bytes)} -> {human_bytes(result.after_bytes)}; evicted "
        f"{result.evicted_blobs} blobs ({human_bytes(result.evicted_bytes)}), "
        f"kept {result.kept_recent_blobs} recently used"
    )
