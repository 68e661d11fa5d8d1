"""End-to-end: what a blocked reader or a ``stat`` costs in requests, through real
FUSE, the real CLI and a real ``git http-backend`` server.

Request counts come from the server's own records (every upload-pack POST it
served, with its wants), never from timings; the one time bound (a demand
read under load) is generous and checked against the request order too.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from artifactfs.testing import GitHttpServer, RequestRecord, git
from artifactfs.testing.repos import distinct_content as content

STALL_SECONDS = 12.0
DEMAND_BOUND = 2.0


def fetches(server: GitHttpServer) -> list[RequestRecord]:
    return [request for request in server.requests if request.command == "fetch"]


def blob_ids(repo: Path) -> dict[str, str]:
    """path -> blob id at the tip of ``repo``."""
    result = {}
    for line in git(repo, "ls-tree", "-r", "HEAD").decode().splitlines():
        meta, path = line.split("\t", 1)
        result[path] = meta.split()[2]
    return result


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout


def ls_sizes(output: str) -> dict[str, int]:
    """name -> size from ``ls -l`` lines of regular files."""
    sizes = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 9 and line.startswith("-"):
            sizes[fields[8]] = int(fields[4])
    return sizes


# --------------------------------------------------------------------------- sizes without object-info


def test_ls_l_of_a_directory_costs_one_request_without_object_info(make_repo, git_root, mounts):
    files = {f"src/f{index:02d}.py": content(f"f{index}", 100 + 37 * index) for index in range(40)}
    files.update({f"other/g{index}.txt": content(f"g{index}", 500) for index in range(10)})
    repo, _ = make_repo("sizes", files)
    oids = blob_ids(repo)
    with GitHttpServer(git_root, object_info=False) as server:
        tree = mounts(server.url("sizes"), "--hydrate", "none")
        server.clear_requests()

        listing = run("ls", "-l", str(tree.path / "src"))

        assert ls_sizes(listing) == {
            path.split("/")[1]: len(data) for path, data in files.items() if path.startswith("src/")
        }
        requests = fetches(server)
        assert 1 <= len(requests) <= 2, [request.want_count for request in requests]
        wanted = [oid for request in requests for oid in request.wants]
        assert sorted(wanted) == sorted(oids[path] for path in files if path.startswith("src/")), (
            "that directory, once"
        )
        # A second listing is answered from what arrived: no request at all.
        assert ls_sizes(run("ls", "-l", str(tree.path / "src"))) == ls_sizes(listing)
        assert len(fetches(server)) == len(requests)


def test_ls_lR_and_find_size_cost_about_one_request_per_directory(make_repo, git_root, mounts):
    directories = [f"pkg{index}" for index in range(5)] + [f"pkg{index}/nested" for index in range(3)]
    files = {
        f"{directory}/file{number}.ts": content(f"{directory}/{number}", 200 + 300 * number)
        for directory in directories
        for number in range(12)
    }
    make_repo("tree", files)
    with GitHttpServer(git_root, object_info=False) as server:
        tree = mounts(server.url("tree"), "--hydrate", "none")
        server.clear_requests()

        listing = run("ls", "-lR", str(tree.path))
        requests = fetches(server)
        assert len(requests) <= 2 * len(directories), [request.want_count for request in requests]
        assert sum(request.want_count for request in requests) == len(files), "every blob fetched once"
        reported = {}
        for block in listing.split("\n\n"):
            header, _, body = block.partition(":\n")
            directory = os.path.relpath(header, tree.path)
            reported.update({f"{directory}/{name}": size for name, size in ls_sizes(body).items()})
        assert reported == {path: len(data) for path, data in files.items()}

        found = run("find", str(tree.path), "-name", "*.ts", "-size", "+2k")
        big = {os.path.relpath(line, tree.path) for line in found.split()}
        assert big == {path for path, data in files.items() if len(data) > 2048}
        assert len(fetches(server)) == len(requests), "find used the sizes already known"


def test_opening_a_file_asks_for_it_alone_without_object_info(make_repo, git_root, mounts):
    """The kernel's permission check before ``open`` is a stat: it may fetch the directory, but
    the file itself goes out in a request of its own, so the open never waits for the directory."""
    files = {f"src/f{index:02d}.py": content(f"open{index}", 300) for index in range(30)}
    repo, _ = make_repo("open", files)
    oids = blob_ids(repo)
    with GitHttpServer(git_root, object_info=False) as server:
        tree = mounts(server.url("open"), "--hydrate", "none")
        server.clear_requests()
        assert (tree.path / "src/f07.py").read_bytes() == files["src/f07.py"]
        requests = fetches(server)
        assert len(requests) <= 2
        assert [request.wants for request in requests if oids["src/f07.py"] in request.wants] == [
            (oids["src/f07.py"],)
        ]
        # The rest of the directory came in the other request: stat'ing it costs nothing more.
        tree.wait_for(lambda status: status["hydration"]["hydrated_blobs"] == len(files))
        assert {path: (tree.path / path).stat().st_size for path in files} == {path: 300 for path in files}
        assert len(fetches(server)) == len(requests)


# --------------------------------------------------------------------------- demand under load


def test_a_demand_read_does_not_wait_for_stalled_background_batches(make_repo, git_server, mounts):
    files = {
        f"d{directory:02d}/m{index:03d}.py": content(f"{directory}/{index}", 1500)
        for directory in range(12)
        for index in range(150)
    }
    repo, _ = make_repo("load", files)
    oids = blob_ids(repo)
    # A first mount fetches the tree and the history; the remount below reuses them, so its
    # first fetch requests are the background lanes' own, and those are the ones stalled.
    first = mounts(git_server.url("load"), "--hydrate", "none")
    first.wait_for(lambda status: status["history_complete"])
    first.unmount()
    git_server.clear_requests()
    for _ in range(3):
        git_server.inject(f"stall:{STALL_SECONDS:g}")
    tree = mounts(git_server.url("load"), "--connections", "3")
    deadline = time.monotonic() + 30
    while len([request for request in fetches(git_server) if request.fault]) < 3:
        assert time.monotonic() < deadline, "the background lanes never made three requests"
        time.sleep(0.02)
    stalled = [request for request in fetches(git_server) if request.fault]
    stalled_from = time.monotonic()
    asked = {oid for request in fetches(git_server) for oid in request.wants}
    target = next(path for path in sorted(files, reverse=True) if oids[path] not in asked)

    started = time.monotonic()
    assert (tree.path / target).read_bytes() == files[target]
    elapsed = time.monotonic() - started

    assert elapsed < DEMAND_BOUND, f"the demand read took {elapsed:.2f}s behind stalled background batches"
    assert time.monotonic() - stalled_from < STALL_SECONDS, "the stalled batches were still in flight"
    requests = fetches(git_server)
    serving = [request for request in requests if oids[target] in request.wants]
    assert len(serving) == 1 and serving[0].fault is None
    # The demand went out alone: its neighbours are boosted on the (stalled) background lanes, not batched with it.
    assert serving[0].wants == (oids[target],)
    assert requests.index(serving[0]) > max(requests.index(request) for request in stalled)
    status = tree.status()["hydration"]
    assert not status["complete"] and status["inflight_blobs"] >= sum(r.want_count for r in stalled)

    # A file whose blob is in flight in one of the stalled batches is asked for again, on its own
    # (one from the end of the batch: the half sent before the stall may have delivered the first ones).
    arrived = {arrival["oid"] for arrival in tree.record()}
    by_oid = {oid: path for path, oid in oids.items()}
    stalled_path = next(by_oid[oid] for oid in reversed(stalled[0].wants) if oid not in arrived)
    started = time.monotonic()
    assert (tree.path / stalled_path).read_bytes() == files[stalled_path]
    elapsed = time.monotonic() - started
    assert elapsed < DEMAND_BOUND, f"the read waited {elapsed:.2f}s for the stalled batch holding its blob"
    assert time.monotonic() - stalled_from < STALL_SECONDS
    assert [
        request.wants
        for request in fetches(git_server)
        if oids[stalled_path] in request.wants and request.fault is None
    ] == [(oids[stalled_path],)]


def test_a_demand_read_does_not_wait_for_another_stalled_demand(make_repo, git_server, mounts):
    files = {f"src/f{index}.py": content(f"two{index}", 800) for index in range(4)}
    repo, _ = make_repo("two", files)
    oids = blob_ids(repo)
    tree = mounts(git_server.url("two"), "--hydrate", "none")
    tree.wait_for(lambda status: status["history_complete"])  # no other fetch may take the fault
    git_server.clear_requests()
    git_server.inject(f"stall:{STALL_SECONDS:g}")
    stalled_from = time.monotonic()
    first = threading.Thread(target=(tree.path / "src/f0.py").read_bytes)
    first.start()
    deadline = time.monotonic() + 10
    while not fetches(git_server):
        assert time.monotonic() < deadline, "the first read made no request"
        time.sleep(0.01)
    assert fetches(git_server)[0].wants == (oids["src/f0.py"],) and fetches(git_server)[0].fault

    started = time.monotonic()
    assert (tree.path / "src/f1.py").read_bytes() == files["src/f1.py"]
    elapsed = time.monotonic() - started
    assert elapsed < DEMAND_BOUND, f"the second read waited {elapsed:.2f}s behind the stalled one"
    assert time.monotonic() - stalled_from < STALL_SECONDS
    first.join()
    assert [request.wants for request in fetches(git_server)] == [(oids["src/f0.py"],), (oids["src/f1.py"],)]
