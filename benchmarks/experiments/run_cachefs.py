"""Time tree-wide tools through cachefs (cachefs.c) in each of its modes, beside the native tree.

Not part of the product: it measures what readdir caching and no-open would
give a FUSE filesystem here (libfuse 3.14, this kernel), for docs/performance.md.
Build cachefs first (see cachefs.c), then, as root::

    python benchmarks/experiments/run_cachefs.py ./cachefs /path/to/a/clone --rounds 5
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODES: dict[str, list[str]] = {
    "plain (open, opendir, no dir cache)": [],
    "cache-readdir": ["cache-readdir"],
    "no-open": ["no-open"],
    "no-open + no-opendir (dir cache)": ["no-open", "no-opendir"],
}


def seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def tools(tree: Path, listing: bytes) -> dict[str, Callable[[], object]]:
    def quiet(*command: str, **options: Any) -> Callable[[], object]:
        return lambda: subprocess.run(command, cwd=tree, stdout=subprocess.DEVNULL, check=False, **options)

    return {
        "read every file (2nd pass)": quiet("xargs", "-0", "cat", input=listing),
        "grep -r": quiet("grep", "-r", "-l", "--exclude-dir=.git", "function", "."),
        "find . -type f": quiet("find", ".", "-path", "./.git", "-prune", "-o", "-type", "f", "-print"),
    }


def measure(tree: Path, listing: bytes, rounds: int) -> dict[str, float]:
    measured = tools(tree, listing)
    for action in measured.values():  # warm every cache first
        action()
    # The minimum: the machine is shared, and noise only ever adds time.
    return {name: min(seconds(action) for _ in range(rounds)) for name, action in measured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cachefs", type=Path)
    parser.add_argument("tree", type=Path, help="a git clone to mirror")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    tree = arguments.tree.resolve()
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=tree, capture_output=True, check=True).stdout
    results = {"native": measure(tree, listing, arguments.rounds)}
    for mode, flags in MODES.items():
        with tempfile.TemporaryDirectory(prefix="cachefs-") as mountpoint:
            subprocess.run([str(arguments.cachefs.resolve()), str(tree), mountpoint, *flags], check=True)
            try:
                results[mode] = measure(Path(mountpoint), listing, arguments.rounds)
            finally:
                subprocess.run(["fusermount3", "-u", mountpoint], check=True)
    steps = list(results["native"])
    print("| tree | " + " | ".join(steps) + " |")
    print("|---" * (len(steps) + 1) + "|")
    for name, values in results.items():
        cells = [
            f"{values[step] * 1000:.0f} ms ({values[step] / results['native'][step]:.1f}x)" for step in steps
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
