"""Mount a locally served repository and use it, with no network: the README's first command.

The repository is ArtifactFS's own history (a bare copy of this checkout),
served over smart HTTP by ``git http-backend`` on 127.0.0.1. The demo mounts it,
reads a file, runs git in the mount, commits an edit, shows hydration status
and unmounts. Pass ``--keep`` to leave the mount up and explore it yourself.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from artifactfs.testing import SERVED_CONFIG, GitHttpServer
from artifactfs.testing.mounts import MountedTree, run_cli

REPOSITORY = Path(__file__).resolve().parent.parent


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def show(command: list[str], cwd: Path) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the mount and server running until Ctrl-C")
    arguments = parser.parse_args()

    workspace = Path(tempfile.mkdtemp(prefix="artifactfs-demo-"))
    served = workspace / "served"
    served.mkdir()
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(REPOSITORY), str(served / "artifactfs.git")], check=True
    )
    for key, value in SERVED_CONFIG.items():
        subprocess.run(["git", "--git-dir", str(served / "artifactfs.git"), "config", key, value], check=True)

    with GitHttpServer(served) as server:
        url = server.url("artifactfs")
        tree = MountedTree(url, workspace / "mnt", workspace / "state")
        step(f"artifactfs mount {url} {tree.path}")
        tree.mount()
        print(f"mounted in {tree.mount_seconds:.2f}s (state under {tree.root})")
        try:
            step("the tree is there at once; contents arrive on first read")
            show(["ls", "-la"], tree.path)
            show(["head", "-n", "8", "pyproject.toml"], tree.path)
            step("stock git works in the mount")
            show(["git", "status", "--short", "--branch"], tree.path)
            show(["git", "log", "--oneline", "-3"], tree.path)
            step("edit and commit")
            (tree.path / "DEMO.txt").write_text("written inside an ArtifactFS mount\n")
            show(["git", "add", "DEMO.txt"], tree.path)
            show(
                [
                    "git",
                    "-c",
                    "user.name=Demo",
                    "-c",
                    "user.email=demo@example.com",
                    "commit",
                    "-q",
                    "-m",
                    "Demo commit",
                ],
                tree.path,
            )
            show(["git", "log", "--oneline", "-1"], tree.path)
            step("hydration progress")
            time.sleep(0.5)
            print(run_cli("status", str(tree.path), root=tree.root).stdout)
            if arguments.keep:
                print(f"\nMount is at {tree.path}; press Ctrl-C to unmount.")
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            step(f"artifactfs unmount {tree.path}")
            tree.unmount()
    shutil.rmtree(workspace, ignore_errors=True)
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
