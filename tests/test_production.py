"""Running ArtifactFS in production: systemd units and notify protocol, logs without
secrets, Prometheus metrics, fsck/gc, recovery after kill -9, several mounts at once."""

from __future__ import annotations

import base64
import configparser
import errno
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from artifactfs.objects import blob_id
from artifactfs.state import StateRoot
from artifactfs.testing import FileSpec, GitHttpServer
from artifactfs.testing.mounts import MountedTree, artifactfs_command, force_unmount, is_mounted, run_cli
from artifactfs.testing.waiting import wait_for_exit

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
SECRET = "tok3n-Sup3r-s3cret"
FILES: dict[str, bytes | FileSpec] = {
    "README.md": b"# Production\n",
    "package.json": b'{"name": "prod"}\n',
    "src/main.py": b"print('main')\n",
    "src/lib/util.py": b"def util() -> int:\n    return 7\n" * 40,
    "assets/data.bin": bytes(range(256)) * 512,
    "bin/tool.sh": FileSpec(b"#!/bin/sh\necho tool\n", executable=True),
}
NAMESPACE_OPTIONS = {
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "PrivateNetwork",
    "PrivateIPC",
    "PrivateUsers",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "ReadOnlyPaths",
    "ReadWritePaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "MountFlags",
    "RootDirectory",
    "RootImage",
    "DynamicUser",
}

MountFactory = Callable[..., MountedTree]
MakeRepo = Callable[..., tuple[Path, str]]


def content(spec: bytes | FileSpec) -> bytes:
    return spec.data if isinstance(spec, FileSpec) else spec


def cached_blobs(state_root: Path) -> list[Path]:
    return [path for path in (StateRoot(state_root).blob_cache_dir / "loose").glob("*/*") if path.is_file()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def installed_artifactfs() -> str:
    """The console script of the Python running the tests (what /usr/local/bin/artifactfs links to)."""
    beside = Path(sys.executable).parent / "artifactfs"
    found = str(beside) if beside.exists() else shutil.which("artifactfs")
    assert found, "the artifactfs console script is not installed (pip install -e .)"
    return found


# --------------------------------------------------------------------- systemd


def unit_copy(tmp_path: Path, name: str, target_name: str) -> Path:
    text = (SYSTEMD_DIR / name).read_text()
    assert name.endswith(".timer") or "ExecStart=/usr/local/bin/artifactfs " in text, (
        "documented install path"
    )
    target = tmp_path / "units" / target_name
    target.parent.mkdir(exist_ok=True)
    target.write_text(text.replace("/usr/local/bin/artifactfs", installed_artifactfs()))
    return target


def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    instance = unit_copy(tmp_path, "artifactfs@.service", "artifactfs@demo.service")
    gc_service = unit_copy(tmp_path, "artifactfs-gc.service", "artifactfs-gc.service")
    gc_timer = unit_copy(tmp_path, "artifactfs-gc.timer", "artifactfs-gc.timer")
    for unit in (instance, gc_timer, gc_service):
        result = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
            f"{unit.name}: {result.stdout}{result.stderr}"
        )
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure is not None, security.stdout + security.stderr
    assert float(exposure.group(1)) < 5.0, "the mount unit lost its hardening"


def test_mount_unit_keeps_the_mount_visible_to_the_host() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD_DIR / "artifactfs@.service")
    service = parser["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure"
    assert "mount --foreground" in service["ExecStart"]
    assert service["EnvironmentFile"] == "/etc/artifactfs/%i.env"
    assert service["DeviceAllow"] == "/dev/fuse rw"
    assert "CAP_SYS_ADMIN" in service["CapabilityBoundingSet"]
    assert not NAMESPACE_OPTIONS & set(service), (
        "a private mount namespace would hide the FUSE mount from the host"
    )
    documented = {
        line.split("=", 1)[0]
        for line in (SYSTEMD_DIR / "artifactfs.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert {
        "ARTIFACTFS_REMOTE",
        "ARTIFACTFS_MOUNTPOINT",
        "ARTIFACTFS_REF",
        "ARTIFACTFS_OPTIONS",
        "ARTIFACTFS_ROOT",
    } <= documented


def test_notify_ready_only_once_listable_then_status_then_clean_stop(
    make_repo: MakeRepo, git_server: GitHttpServer, tmp_path: Path, state_root: Path, fuse: None
) -> None:
    make_repo("svc", FILES)
    mountpoint = tmp_path / "svc"
    mountpoint.mkdir()
    notify_path = tmp_path / "notify.sock"
    stderr_path = tmp_path / "stderr.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver, stderr_path.open("wb") as stderr:
        receiver.bind(str(notify_path))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        receiver.settimeout(30)
        environment = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "ARTIFACTFS_ROOT": str(state_root),
            "ARTIFACTFS_REF": "main",
        }
        process = subprocess.Popen(
            artifactfs_command(
                "mount", "--foreground", "--log-format", "json", git_server.url("svc"), str(mountpoint)
            ),
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            messages: list[tuple[str, int, list[str] | None]] = []
            while not any(text.startswith("STATUS=") for text, _, _ in messages[1:]):
                data, ancillary, _, _ = receiver.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
                text = data.decode()
                listing = sorted(os.listdir(mountpoint)) if "READY=1" in text.splitlines() else None
                sender = next(
                    struct.unpack("3i", payload)[0]
                    for level, kind, payload in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                )
                messages.append((text, sender, listing))
            ready_text, _, listing_at_ready = messages[0]
            assert "READY=1" in ready_text.splitlines(), messages
            assert listing_at_ready is not None and {"README.md", "src", ".git"} <= set(listing_at_ready)
            assert all(sender == process.pid for _, sender, _ in messages), (
                "NotifyAccess=main needs the main pid"
            )
            progress = messages[-1][0]
            assert re.fullmatch(
                r"STATUS=mounted: \d+/6 blobs hydrated, \d+ queued, \d+ failed(, ETA \d+s)?", progress
            )
            assert (mountpoint / "src/main.py").read_bytes() == FILES["src/main.py"]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            assert not is_mounted(mountpoint)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            force_unmount(mountpoint)
    lines = stderr_path.read_text().splitlines()
    assert lines, "the foreground daemon logged nothing to stderr (the journal)"
    documents = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= set(documents[0])
    assert any("unmounted" in document["message"] for document in documents)


# --------------------------------------------------------------------- logs and metrics


def test_credentials_never_reach_logs_status_or_list(
    make_repo: MakeRepo, git_root: Path, tmp_path: Path, state_root: Path, fuse: None
) -> None:
    make_repo("private", FILES)
    basic = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    outputs: list[str] = []
    with GitHttpServer(git_root, auth=("alice", SECRET)) as server:
        url = server.url("private").replace("http://", f"http://alice:{SECRET}@")
        text_tree = MountedTree(
            url, tmp_path / "text", state_root, ["--log-level", "debug", "--log-format", "text"]
        )
        json_tree = MountedTree(
            url, tmp_path / "json", state_root, ["--log-level", "debug", "--log-format", "json"]
        )
        with text_tree, json_tree:
            for tree in (text_tree, json_tree):
                assert (tree.path / "src/lib/util.py").read_bytes() == FILES["src/lib/util.py"]
                tree.git("status")
            for arguments in (
                ("status", str(text_tree.path)),
                ("status", "--json", str(json_tree.path)),
                ("list",),
                ("list", "--json"),
            ):
                result = run_cli(*arguments, root=state_root)
                outputs.append(result.stdout + result.stderr)
            assert "alice@127.0.0.1" in outputs[0], "the display form keeps the user name"
        wrong = url.replace(SECRET, "wr0ng-pa55word")
        refused = run_cli("mount", wrong, str(tmp_path / "text"), root=state_root, check=False)
        assert refused.returncode != 0
        outputs.append(refused.stdout + refused.stderr)
    text_lines, json_lines = (
        [line for log in _logs_of(state_root, tree.path) for line in log.read_text().splitlines()]
        for tree in (text_tree, json_tree)
    )
    assert any("401" in line or "authentication" in line.lower() for line in text_lines), "refusal not logged"
    for text in outputs + text_lines + json_lines:
        assert SECRET not in text and basic not in text and "wr0ng-pa55word" not in text, text
    assert any(" DEBUG " in line for line in text_lines)
    assert any("alice@127.0.0.1" in line for line in text_lines)
    documents = [json.loads(line) for line in json_lines]
    assert all({"time", "level", "logger", "message"} <= set(document) for document in documents)
    assert any(document["level"] == "debug" for document in documents)
    assert any("alice@127.0.0.1" in document["message"] for document in documents)


def _logs_of(state_root: Path, mountpoint: Path) -> list[Path]:
    return [
        mount.log_file
        for mount in StateRoot(state_root).mount_states()
        if mount.log_file.exists()
        and json.loads(mount.description.read_text())["mountpoint"] == str(mountpoint)
    ]


def scrape(port: int, path: str = "/metrics") -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_prometheus_metrics_endpoint(
    make_repo: MakeRepo, git_server: GitHttpServer, mounts: MountFactory, tmp_path: Path, state_root: Path
) -> None:
    make_repo("metered", FILES)
    port = free_port()
    tree = mounts(git_server.url("metered"), "--hydrate", "none", "--metrics-address", f"127.0.0.1:{port}")
    assert (tree.path / "assets/data.bin").read_bytes() == FILES["assets/data.bin"]
    assert (tree.path / "README.md").read_bytes() == FILES["README.md"]
    status = tree.status()
    samples = scrape(port)
    hydration = status["hydration"]
    assert sum(value for _, value in samples["artifactfs_hydrated_blobs"]) == hydration["hydrated_blobs"] >= 2
    assert sum(value for _, value in samples["artifactfs_tree_blobs"]) == hydration["total_blobs"] == 6
    assert {labels["class"] for labels, _ in samples["artifactfs_hydrated_bytes"]} == set(
        hydration["classes"]
    )
    assert sum(value for _, value in samples["artifactfs_hydrated_bytes"]) >= len(FILES["assets/data.bin"])
    assert samples["artifactfs_hydration_queue_depth"][0][1] == 0
    operations = {labels["operation"]: value for labels, value in samples["artifactfs_fuse_operations_total"]}
    assert operations["open"] >= 2 and operations["read"] >= 1
    read_latency = {
        labels["le"]: value
        for labels, value in samples["artifactfs_fuse_operation_seconds_bucket"]
        if labels["operation"] == "read"
    }
    assert read_latency["+Inf"] == operations["read"]
    fetches = {labels["le"]: value for labels, value in samples["artifactfs_fetch_seconds_bucket"]}
    assert fetches["+Inf"] >= 1 and samples["artifactfs_fetch_seconds_count"][0][1] == fetches["+Inf"]
    assert samples["artifactfs_errors_total"][0][1] == 0
    from_sources = {labels["source"]: value for labels, value in samples["artifactfs_source_blobs_total"]}
    assert from_sources == {name: stats["blobs"] for name, stats in hydration["sources"].items()}
    assert from_sources["origin"] >= 2 and set(from_sources) == {"cache", "origin"}
    assert samples["artifactfs_remote_up"][0][1] == 1
    assert (
        samples["artifactfs_hydration_paused"][0][1] == 0
        and samples["artifactfs_hydration_retrying_blobs"][0][1] == 0
    )
    info_labels = samples["artifactfs_mount_info"][0][0]
    assert info_labels["mountpoint"] == str(tree.path) and info_labels["head"] == status["head"]
    assert samples["process_resident_memory_bytes"][0][1] > 0
    with pytest.raises(urllib.error.HTTPError) as missing:
        scrape(port, "/elsewhere")
    assert missing.value.code == 404
    (tmp_path / "clash").mkdir()
    clash = run_cli(
        "mount",
        "--metrics-address",
        f"127.0.0.1:{port}",
        git_server.url("metered"),
        str(tmp_path / "clash"),
        root=state_root,
        check=False,
    )
    assert clash.returncode != 0 and f"cannot serve metrics on 127.0.0.1:{port}" in clash.stderr
    assert not is_mounted(tmp_path / "clash")
    assert scrape(port)["artifactfs_mount_info"], "the first mount's endpoint must survive the clash"


# --------------------------------------------------------------------- fsck, gc, recovery


def overlay_dir(state_root: Path) -> Path:
    (found,) = [mount.overlay for mount in StateRoot(state_root).mount_states()]
    return found


def test_fsck_repairs_the_cache_and_reports_lost_overlay_data(
    make_repo: MakeRepo, git_server: GitHttpServer, mounts: MountFactory, state_root: Path
) -> None:
    make_repo("checked", FILES)
    tree = mounts(git_server.url("checked"), "--hydrate", "none")
    assert (tree.path / "package.json").read_bytes() == FILES["package.json"]
    with open(tree.path / "src/new.py", "wb") as stream:
        stream.write(b"new = True\n")
        os.fsync(stream.fileno())
    clean = run_cli("fsck", str(tree.path), root=state_root)
    assert "result: clean (0 repaired, 0 not repairable)" in clean.stdout
    assert "mounted by daemon" in clean.stdout and re.search(
        r"blob cache: [1-9]\d* blobs verified", clean.stdout
    )

    damaged_blob = (
        state_root
        / "cache/blobs/loose"
        / blob_id(content(FILES["package.json"]))[:2]
        / blob_id(content(FILES["package.json"]))[2:]
    )
    os.chmod(damaged_blob, 0o644)
    damaged_blob.write_bytes(b"X" * len(content(FILES["package.json"])))
    repaired = run_cli("fsck", str(tree.path), root=state_root)
    assert (
        "repaired  removed damaged cached blob" in repaired.stdout
        and "result: clean (1 repaired" in repaired.stdout
    )
    assert not damaged_blob.exists()
    tree.unmount()

    overlay = overlay_dir(state_root)
    (overlay / "data" / ("0" * 32)).write_bytes(b"left over by a crash")
    with sqlite3.connect(overlay / "overlay.db") as database:
        (data_id,) = database.execute(
            "SELECT data_id FROM entries WHERE path = ?", (b"src/new.py",)
        ).fetchone()
    offline = run_cli("fsck", str(tree.path), root=state_root)
    assert "removed 1 unreferenced data files" in offline.stdout and offline.returncode == 0
    assert not (overlay / "data" / ("0" * 32)).exists()
    (overlay / "data" / data_id).unlink()
    lost = run_cli("fsck", str(tree.path), root=state_root, check=False)
    assert lost.returncode == 1
    assert "the content of 'src/new.py' is lost" in lost.stdout and "result: DAMAGED" in lost.stdout


def test_gc_bounds_the_cache_and_evicted_blobs_hydrate_again(
    make_repo: MakeRepo, git_server: GitHttpServer, mounts: MountFactory, state_root: Path
) -> None:
    make_repo("collected", FILES)
    tree = mounts(git_server.url("collected"))
    tree.wait_for(lambda status: status["hydration"]["complete"])
    assert len(cached_blobs(state_root)) == 6
    result = run_cli("gc", "--max-size", "1K", "--keep-recent", "0", root=state_root)
    assert "evicted" in result.stdout
    remaining = sum(path.stat().st_size for path in cached_blobs(state_root))
    assert remaining <= 1024 and len(cached_blobs(state_root)) < 6
    git_server.clear_requests()
    for name, spec in FILES.items():
        assert (tree.path / name).read_bytes() == content(spec), name
    assert any(request.command == "fetch" for request in git_server.requests), "nothing was hydrated again"
    assert len(cached_blobs(state_root)) == 6
    protected = run_cli("gc", "--max-size", "0", root=state_root)
    assert "evicted 0 blobs" in protected.stdout, "blobs used a moment ago must survive"
    assert len(cached_blobs(state_root)) == 6


def test_remount_after_kill_9_recovers_and_keeps_fsynced_changes(
    make_repo: MakeRepo, git_server: GitHttpServer, mounts: MountFactory, state_root: Path
) -> None:
    make_repo("crashy", FILES)
    tree = mounts(git_server.url("crashy"), "--hydrate", "none")
    (tree.path / "notes").mkdir()
    changes = {"notes/todo.txt": b"survive the crash\n", "README.md": b"# Production, edited\n"}
    for name, data in changes.items():
        with open(tree.path / name, "wb") as stream:
            stream.write(data)
            os.fsync(stream.fileno())
    os.rename(tree.path / "src/main.py", tree.path / "src/app.py")
    directory = os.open(tree.path / "src", os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(directory)
    os.close(directory)
    old_pid = tree.status()["pid"]
    os.kill(old_pid, signal.SIGKILL)
    wait_for_exit(old_pid)
    with pytest.raises(OSError) as stale:
        os.listdir(tree.path)
    assert stale.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert json.loads(run_cli("list", "--json", root=state_root).stdout)[0]["state"] == "dead"

    tree.mount()
    for name, data in changes.items():
        assert (tree.path / name).read_bytes() == data
    assert (tree.path / "src/app.py").read_bytes() == FILES["src/main.py"]
    assert not (tree.path / "src/main.py").exists()
    assert sorted(tree.git("status", "--porcelain").stdout.splitlines()) == sorted(
        [" M README.md", " D src/main.py", "?? notes/", "?? src/app.py"]
    )
    (row,) = json.loads(run_cli("list", "--json", root=state_root).stdout)
    assert row["state"] == "mounted" and row["pid"] != old_pid
    check = run_cli("fsck", str(tree.path), root=state_root)
    assert "result: clean (0 repaired, 0 not repairable)" in check.stdout


def test_list_shows_two_mounts_of_two_repositories(
    make_repo: MakeRepo, git_server: GitHttpServer, mounts: MountFactory
) -> None:
    make_repo("alpha", {"a.txt": b"alpha\n"})
    make_repo("beta", {"b.txt": b"beta\n", "c.txt": b"gamma\n"})
    first = mounts(git_server.url("alpha"), name="alpha")
    second = mounts(git_server.url("beta"), name="beta")
    assert (first.path / "a.txt").read_bytes() == b"alpha\n"
    assert (second.path / "b.txt").read_bytes() == b"beta\n"
    second.wait_for(lambda status: status["hydration"]["complete"])
    rows = json.loads(run_cli("list", "--json", root=first.root).stdout)
    by_mountpoint = {row["mountpoint"]: row for row in rows}
    assert set(by_mountpoint) == {str(first.path), str(second.path)}
    assert by_mountpoint[str(first.path)]["remote"] == git_server.url("alpha")
    assert by_mountpoint[str(second.path)]["remote"] == git_server.url("beta")
    assert by_mountpoint[str(second.path)]["hydrated"] == "2/2"
    assert {row["state"] for row in rows} == {"mounted"}
    assert len({row["pid"] for row in rows}) == 2, "one daemon per mount"
    text = run_cli("list", root=first.root).stdout.splitlines()
    assert len(text) == 2 and all("\tmounted\t" in line for line in text)
