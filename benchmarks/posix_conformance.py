"""POSIX conformance of the mount's overlay: pjdfstest run inside a real mount.

The suite is cloned and built outside the repository (``--work``, default
under /tmp) the first time; the script then mounts a small repository with
``--allow-other``, runs ``prove -r`` on the suite from a fresh directory in the
mount, as root, and prints the pass rate and the failing test files. Needs
root, FUSE, a C toolchain, autoconf/automake and perl's ``prove``::

    python -m benchmarks.posix_conformance
    python -m benchmarks.posix_conformance --source /path/to/pjdfstest.git --only chown,link
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from artifactfs.testing import make_bare_repo
from artifactfs.testing.mounts import MountedTree

SUITE_URL = "https://github.com/pjd/pjdfstest"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "artifactfs-pjdfstest"
_RESULT_LINE = re.compile(r"^(\S+\.t) \.+ ?(.*)$")
_FAILED_LINE = re.compile(r"^(\S+\.t)\s+\(Wstat: \d+ Tests: (\d+) Failed: (\d+)\)")


def build_suite(work: Path, source: str) -> Path:
    """Clone and build pjdfstest under ``work`` (once); returns the source directory."""
    suite = work / "pjdfstest"
    if (suite / "pjdfstest").exists():
        return suite
    work.mkdir(parents=True, exist_ok=True)
    if not suite.exists():
        subprocess.run(["git", "clone", "--quiet", source, str(suite)], check=True)
    for command in (["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]):
        subprocess.run(command, cwd=suite, check=True, capture_output=True)
    return suite


def run_suite(suite: Path, directory: Path, only: list[str]) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """Run the suite with ``directory`` as working directory.

    Returns (tests, failed, {test file: (failed, tests)}) from prove's summary.
    """
    targets = [str(suite / "tests" / name) for name in only] if only else [str(suite / "tests")]
    result = subprocess.run(
        ["prove", "-r", *targets], cwd=directory, capture_output=True, text=True, timeout=3600
    )
    output = result.stdout + result.stderr
    failing: dict[str, tuple[int, int]] = {}
    for line in output.splitlines():
        match = _FAILED_LINE.match(line)
        if match and int(match.group(3)):
            name = match.group(1).split("/tests/", 1)[-1]
            failing[name] = (int(match.group(3)), int(match.group(2)))
    totals = re.search(r"Files=\d+, Tests=(\d+)", output)
    if totals is None:
        raise SystemExit(f"prove printed no summary:\n{output[-2000:]}")
    tests = int(totals.group(1))
    return tests, sum(failed for failed, _ in failing.values()), failing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the suite is built")
    parser.add_argument("--source", default=SUITE_URL, help="git URL or path of pjdfstest")
    parser.add_argument("--only", default="", help="comma-separated test directories, e.g. chown,link")
    parser.add_argument("--native", action="store_true", help="run on a plain directory instead (reference)")
    parser.add_argument(
        "--in-base", action="store_true", help="run in a directory of the base tree instead of a new one"
    )
    options = parser.parse_args()
    suite = build_suite(options.work, options.source)
    only = [name for name in options.only.split(",") if name]
    with tempfile.TemporaryDirectory(prefix="artifactfs-posix-") as scratch:
        base = Path(scratch)
        if options.native:
            target = base / "native"
            target.mkdir()
            report(*run_suite(suite, target, only))
            return
        repo = base / "repo.git"
        make_bare_repo(repo, {"README.md": b"conformance\n", "src/main.c": b"int main(void) { return 0; }\n"})
        with MountedTree(str(repo), base / "mnt", base / "state", ["--allow-other"]) as tree:
            target = tree.path / ("src" if options.in_base else "pjdfstest")
            if not options.in_base:
                target.mkdir()
            target.chmod(0o777)
            report(*run_suite(suite, target, only))


def report(tests: int, failed: int, failing: dict[str, tuple[int, int]]) -> None:
    passed = tests - failed
    print(f"pjdfstest: {passed}/{tests} passed ({100.0 * passed / max(tests, 1):.1f}%)")
    categories: dict[str, int] = {}
    for name, (count, _) in failing.items():
        category = name.split("/")[0]
        categories[category] = categories.get(category, 0) + count
    for category, count in sorted(categories.items(), key=lambda item: -item[1]):
        print(f"  {category:<12} {count:>5} failed")
    for name, (count, total) in sorted(failing.items()):
        print(f"    {name}: {count}/{total} failed")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
