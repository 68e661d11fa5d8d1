#!/usr/bin/env python3
"""An agent-style job on a mounted repository.

Mounts the remote, prefetches and reads the dependency manifests, writes a
summary file, commits and pushes it to the mounted branch, and unmounts,
whatever happens in between. Mounting fetches no file contents; the agent
asks for the manifests first. Needs ``artifactfs`` and ``git`` on PATH.

    agent.py --remote https://host/org/repo.git [--mountpoint DIR]

``--remote`` and ``--mountpoint`` default to $ARTIFACTFS_REMOTE and
$ARTIFACTFS_MOUNTPOINT; ARTIFACTFS_REF and ARTIFACTFS_ROOT are honoured by
``artifactfs mount`` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

MANIFESTS = (
    "package.json",
    "pyproject.toml",
    "requirements.txt",
    "go.mod",
    "Cargo.toml",
    "Gemfile",
    "pom.xml",
)
IDENTITY = {
    "GIT_AUTHOR_NAME": "ArtifactFS agent",
    "GIT_AUTHOR_EMAIL": "agent@artifactfs.invalid",
    "GIT_COMMITTER_NAME": "ArtifactFS agent",
    "GIT_COMMITTER_EMAIL": "agent@artifactfs.invalid",
}


def run(*command: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, check=False, env={**IDENTITY, **os.environ}
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed: {result.stderr.strip()}")
    return result.stdout


def describe(path: Path) -> str:
    """One line about a manifest: what it names and how many dependencies it lists."""
    text = path.read_text(errors="replace")
    if path.name == "package.json":
        document = json.loads(text)
        dependencies = len(document.get("dependencies", {})) + len(document.get("devDependencies", {}))
        return (
            f"{document.get('name', '?')} {document.get('version', '')}".strip()
            + f", {dependencies} dependencies"
        )
    if path.name == "pyproject.toml":
        project = tomllib.loads(text).get("project", {})
        return f"{project.get('name', '?')}, {len(project.get('dependencies', []))} dependencies"
    if path.name == "requirements.txt":
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        return f"{len(lines)} requirements"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first[:80]


def summarise(mountpoint: Path) -> str:
    found = [name for name in MANIFESTS if (mountpoint / name).is_file()]
    lines = ["# Manifests", ""]
    lines += [f"- `{name}`: {describe(mountpoint / name)}" for name in found] or ["No known manifest found."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise a repository's manifests and push the summary.")
    parser.add_argument("--remote", default=os.environ.get("ARTIFACTFS_REMOTE"))
    parser.add_argument("--mountpoint", default=os.environ.get("ARTIFACTFS_MOUNTPOINT"))
    parser.add_argument("--output", default="MANIFESTS.md", help="file to write, relative to the repository")
    parser.add_argument("--message", default="Summarise the dependency manifests")
    args = parser.parse_args(argv)
    if not args.remote:
        parser.error("pass --remote or set ARTIFACTFS_REMOTE")
    mountpoint = Path(args.mountpoint or tempfile.mkdtemp(prefix="artifactfs-agent-")).absolute()
    mountpoint.mkdir(parents=True, exist_ok=True)
    run("artifactfs", "mount", "--hydrate", "none", args.remote, str(mountpoint))
    try:
        # Only the manifests the tree has: prefetch refuses a path that matches nothing (listing is free).
        present = [name for name in MANIFESTS if (mountpoint / name).exists()]
        if present:
            run("artifactfs", "prefetch", str(mountpoint), *present)
        summary = summarise(mountpoint)
        (mountpoint / args.output).write_text(summary)
        run("git", "add", "--", args.output, cwd=mountpoint)
        run("git", "commit", "--quiet", "--message", args.message, cwd=mountpoint)
        run("git", "push", "--quiet", "origin", "HEAD", cwd=mountpoint)
        commit = run("git", "rev-parse", "HEAD", cwd=mountpoint).strip()
        print(f"pushed {commit}: {args.output}\n{summary}", end="")
    finally:
        unmounted = subprocess.run(
            ["artifactfs", "unmount", str(mountpoint)], capture_output=True, text=True, check=False
        )
        if unmounted.returncode != 0:
            print(f"agent: unmount failed: {unmounted.stderr.strip()}", file=sys.stderr)
    return unmounted.returncode and 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as error:
        print(f"agent: {error}", file=sys.stderr)
        sys.exit(1)
