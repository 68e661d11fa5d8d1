"""Deterministic synthetic monorepo corpora for the benchmarks, built with ``git fast-import``.

:func:`build_corpus` makes a bare repository whose tip looks like a polyglot
monorepo (``packages/<name>/`` directories with package.json / go.mod /
Cargo.toml / pyproject.toml manifests, configs, 1-20 KB source files, markdown
docs, text fixtures and a few 50 KB-2 MB binaries) and whose history has
``commits`` commits, each after the first editing one to three files. The
fast-import stream is generated and piped in one pass; every version of a path
is sent consecutively as a ``blob`` command so fast-import deltifies it against
its predecessor, which keeps even 150k-commit histories to seconds. The result
is repacked with bitmaps, reverse indexes and a commit-graph, like a hosting
service would serve it.

:func:`corpus_path` caches built corpora under a directory (default
``/tmp/artifactfs-bench-corpora``, or ``$ARTIFACTFS_BENCH_CORPORA``) keyed by
their parameters. Run this module to build one::

    python -m benchmarks.corpus --files 5000 --commits 40000
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from artifactfs.testing import SERVED_CONFIG, git, git_env

CORPUS_VERSION = 3
"""Bump when the generator changes so cached corpora are rebuilt."""

DEFAULT_CACHE = Path(os.environ.get("ARTIFACTFS_BENCH_CORPORA", "/tmp/artifactfs-bench-corpora"))
BRANCH = "main"
EPOCH = 1_600_000_000
COMMIT_SPACING_SECONDS = 631

EXTRA_SERVING_CONFIG: dict[str, str] = {
    "pack.writeReverseIndex": "true",
    "repack.writeBitmaps": "true",
    "pack.writeBitmapHashCache": "true",
}
"""Beyond :data:`SERVED_CONFIG`: what a hosting service keeps on its packs."""

_AUTHORS = (
    "Ada Lovelace <ada@example.com>",
    "Grace Hopper <grace@example.com>",
    "Linus Nilsson <linus@example.com>",
    "Margaret Hamilton <margaret@example.com>",
    "Ken Okafor <ken@example.com>",
    "Barbara Liskov <barbara@example.com>",
)
_VERBS = (
    "fix",
    "add",
    "refactor",
    "speed up",
    "clean up",
    "document",
    "test",
    "rename",
    "simplify",
    "harden",
)
_LANGUAGES = ("ts", "ts", "go", "rs", "py")
_TEXT_EXTENSIONS = ("csv", "snap", "svg", "tsv")
_BINARY_EXTENSIONS = ("png", "zip", "woff2", "jpg")
_SET, _DELETE, _INSERT = 0, 1, 2
"""Codes of the operations that undo an edit (see :meth:`TextFile.edit`)."""
_EDIT_WEIGHTS = {"source": 1.0, "manifest": 0.5, "docs": 0.3, "config": 0.15, "text": 0.1}


# --------------------------------------------------------------------- content pools


def _words(rng: random.Random, count: int) -> list[str]:
    syllables = [
        "ka",
        "lo",
        "mi",
        "ren",
        "tor",
        "sa",
        "vel",
        "qui",
        "dan",
        "po",
        "zu",
        "fer",
        "gil",
        "an",
        "ex",
        "ob",
        "ist",
        "ul",
        "mar",
        "ne",
        "cor",
        "tix",
        "bra",
        "sho",
        "ven",
        "al",
        "id",
        "op",
        "ux",
        "yr",
    ]
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


@dataclass(frozen=True)
class Pools:
    """Lines that file contents are assembled from, one pool per kind of file."""

    source: dict[str, list[bytes]]
    prose: list[bytes]
    deps: dict[str, list[bytes]]
    text: list[bytes]


def _make_pools(rng: random.Random) -> Pools:
    words = _words(rng, 3000)

    def w() -> str:
        return rng.choice(words)

    def cap() -> str:
        return w().capitalize()

    def sentence(low: int, high: int) -> str:
        return " ".join(w() for _ in range(rng.randint(low, high)))

    templates: dict[str, list[Callable[[], str]]] = {
        "py": [
            lambda: f"def {w()}_{w()}({w()}: {cap()}, {w()}: int = {rng.randint(0, 99)}) -> {cap()}:",
            lambda: f"    {w()} = {w()}.{w()}({w()}, {w()}={rng.randint(0, 999)})",
            lambda: f"    return {w()}_{w()}({w()}) if {w()} else None",
            lambda: f"    # {sentence(4, 12)}",
            lambda: f"from {w()}.{w()} import {cap()}{cap()}, {w()}_{w()}",
            lambda: f"class {cap()}{cap()}({cap()}):",
            lambda: f"    if {w()} is not None and len({w()}) > {rng.randint(1, 64)}:",
            lambda: f'        raise {cap()}Error(f"{sentence(2, 6)} {{{w()}!r}}")',
            lambda: f"        self.{w()}[{w()}] = {w()}.get({w()!r}, {rng.randint(0, 9)})",
            lambda: "",
        ],
        "ts": [
            lambda: f"export function {w()}{cap()}({w()}: {cap()}, {w()}?: number): {cap()} {{",
            lambda: f"  const {w()} = await {w()}.{w()}{cap()}({w()}, {{ {w()}: {rng.randint(0, 999)} }});",
            lambda: f"  return {w()}.map(({w()}) => {w()}.{w()}).filter(Boolean);",
            lambda: f"  // {sentence(4, 12)}",
            lambda: f'import {{ {cap()}{cap()}, {w()}{cap()} }} from "../{w()}/{w()}";',
            lambda: f"export interface {cap()}{cap()} {{ {w()}: string; {w()}: {cap()}[] }}",
            lambda: f"  if ({w()}.length > {rng.randint(1, 64)} && !{w()}) {{",
            lambda: f"    throw new {cap()}Error(`{sentence(2, 6)} ${{{w()}}}`);",
            lambda: "}",
            lambda: "",
        ],
        "go": [
            lambda: (
                f"func ({w()[0]} *{cap()}{cap()}) {cap()}{cap()}(ctx context.Context, {w()} {cap()}) error {{"
            ),
            lambda: f"\t{w()}, err := {w()}.{cap()}{cap()}(ctx, {w()}, {rng.randint(0, 999)})",
            lambda: "\tif err != nil {",
            lambda: f'\t\treturn fmt.Errorf("{sentence(2, 5)}: %w", err)',
            lambda: f"\t// {sentence(4, 12)}",
            lambda: f"type {cap()}{cap()} struct {{ {cap()} []{cap()}; {cap()} int }}",
            lambda: f"\tfor _, {w()} := range {w()}.{cap()} {{",
            lambda: f"\t\t{w()}[{w()}.{cap()}] = append({w()}[{w()}.{cap()}], {w()})",
            lambda: "\t}",
            lambda: "",
        ],
        "rs": [
            lambda: (
                f"pub fn {w()}_{w()}(&self, {w()}: &{cap()}, {w()}: usize) -> Result<{cap()}, {cap()}Error> {{"
            ),
            lambda: f"    let {w()} = self.{w()}.{w()}_{w()}(&{w()}, {rng.randint(0, 999)})?;",
            lambda: f"    // {sentence(4, 12)}",
            lambda: f"use crate::{w()}::{{{cap()}{cap()}, {w()}_{w()}}};",
            lambda: (
                f"pub struct {cap()}{cap()} {{ {w()}: Vec<{cap()}>, {w()}: u{rng.choice((8, 16, 32, 64))} }}"
            ),
            lambda: f"    if {w()}.len() > {rng.randint(1, 64)} && !{w()}.is_empty() {{",
            lambda: f'        return Err({cap()}Error::new("{sentence(2, 6)}"));',
            lambda: f"    Ok({cap()}::from({w()}))",
            lambda: "}",
            lambda: "",
        ],
    }
    source = {
        language: [(rng.choice(lines)() + "\n").encode() for _ in range(6000)]
        for language, lines in templates.items()
    }
    prose: list[bytes] = []
    for _ in range(6000):
        kind = rng.random()
        if kind < 0.08:
            prose.append(f"## {sentence(2, 5).capitalize()}\n".encode())
        elif kind < 0.2:
            prose.append(f"- {sentence(4, 14)}\n".encode())
        elif kind < 0.25:
            prose.append(f"    {w()}.{w()}({w()})\n".encode())
        else:
            prose.append(f"{sentence(8, 24).capitalize()}.\n".encode())

    def version() -> str:
        return f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 40)}"

    deps = {
        "ts": [f'    "{w()}-{w()}": "^{version()}",\n'.encode() for _ in range(2000)],
        "go": [f"\tgithub.com/{w()}/{w()} v{version()}\n".encode() for _ in range(2000)],
        "rs": [f'{w()}-{w()} = "{version()}"\n'.encode() for _ in range(2000)],
        "py": [f'    "{w()}-{w()}>={version()}",\n'.encode() for _ in range(2000)],
    }
    text = [
        ",".join(
            str(rng.randint(0, 100000)) if rng.random() < 0.5 else w() for _ in range(rng.randint(3, 9))
        ).encode()
        + b"\n"
        for _ in range(4000)
    ]
    return Pools(source=source, prose=prose, deps=deps, text=text)


# --------------------------------------------------------------------- file models


@dataclass
class TextFile:
    """A text file as ``prefix + lines + suffix`` over a shared line pool, so edits are cheap."""

    path: str
    kind: str
    prefix: bytes
    pool: list[bytes]
    lines: list[int]
    suffix: bytes = b""

    def render(self) -> bytes:
        pool = self.pool
        return self.prefix + b"".join([pool[i] for i in self.lines]) + self.suffix

    def edit(self, rng: random.Random, undo: array[int]) -> None:
        """Replace, insert and delete a few lines, as a small commit would; append to
        ``undo`` the operations that revert it, then their count."""
        lines = self.lines
        size = len(self.pool)
        operations = 0
        for _ in range(rng.randint(1, 4)):
            if lines:
                position = rng.randrange(len(lines))
                undo.extend((_SET, position, lines[position]))
                lines[position] = rng.randrange(size)
                operations += 1
        for _ in range(rng.randint(0, 2)):
            position = rng.randint(0, len(lines))
            lines.insert(position, rng.randrange(size))
            undo.extend((_DELETE, position, 0))
            operations += 1
        for _ in range(rng.randint(0, 2)):
            if len(lines) > 2:
                position = rng.randrange(len(lines))
                undo.extend((_INSERT, position, lines.pop(position)))
                operations += 1
        undo.append(operations)

    def revert(self, undo: array[int]) -> None:
        """Undo the last :meth:`edit` recorded in ``undo`` (and drop its record)."""
        lines = self.lines
        for _ in range(undo.pop()):
            value, position, code = undo.pop(), undo.pop(), undo.pop()
            if code == _SET:
                lines[position] = value
            elif code == _DELETE:
                del lines[position]
            else:
                lines.insert(position, value)


@dataclass
class BinaryFile:
    """Random bytes: incompressible, never edited."""

    path: str
    data: bytes

    def render(self) -> bytes:
        return self.data


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


@dataclass
class _Layout:
    """Builds the tip's file list to an exact count."""

    rng: random.Random
    pools: Pools
    files: list[TextFile | BinaryFile] = field(default_factory=list)

    def _pick_lines(self, pool: list[bytes], size: int) -> list[int]:
        count = max(1, size // 40)
        return [self.rng.randrange(len(pool)) for _ in range(count)]

    def source(self, path: str, language: str) -> TextFile:
        comment = "#" if language == "py" else "//"
        prefix = f"{comment} {path}: generated benchmark source\n\n".encode()
        pool = self.pools.source[language]
        return TextFile(
            path, "source", prefix, pool, self._pick_lines(pool, _log_uniform(self.rng, 1024, 20480))
        )

    def doc(self, path: str, title: str, low: int = 1024, high: int = 8192) -> TextFile:
        pool = self.pools.prose
        return TextFile(
            path,
            "docs",
            f"# {title}\n\n".encode(),
            pool,
            self._pick_lines(pool, _log_uniform(self.rng, low, high)),
        )

    def text(self, path: str) -> TextFile:
        pool = self.pools.text
        return TextFile(
            path,
            "text",
            f"# fixture {path}\n".encode(),
            pool,
            self._pick_lines(pool, _log_uniform(self.rng, 512, 30720)),
        )

    def manifest(self, path: str, language: str, name: str) -> TextFile:
        pool = self.pools.deps[language]
        lines = [self.rng.randrange(len(pool)) for _ in range(self.rng.randint(3, 25))]
        if language == "ts":
            prefix = (
                f'{{\n  "name": "@mono/{name}",\n  "version": "1.0.0",\n  "private": true,\n'
                f'  "main": "dist/index.js",\n  "scripts": {{ "build": "tsc -b", "test": "vitest run" }},\n'
                f'  "dependencies": {{\n'
            )
            suffix = '    "typescript": "^5.4.0"\n  }\n}\n'
        elif language == "go":
            prefix = f"module github.com/mono/{name}\n\ngo 1.22\n\nrequire (\n"
            suffix = ")\n"
        elif language == "rs":
            prefix = f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n'
            suffix = ""
        else:
            prefix = (
                f'[project]\nname = "{name}"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
                f"dependencies = [\n"
            )
            suffix = ']\n\n[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        return TextFile(path, "manifest", prefix.encode(), pool, lines, suffix.encode())

    def config(self, path: str) -> TextFile:
        pool = self.pools.prose
        name = path.rsplit("/", 1)[-1]
        prefix = {
            ".gitignore": "node_modules/\ndist/\ntarget/\n__pycache__/\n*.log\n.env\n",
            "Dockerfile": "FROM debian:bookworm-slim\nWORKDIR /app\nCOPY . .\nRUN make build\n",
            "Makefile": ".PHONY: build test\nbuild:\n\t./tools/build.sh\ntest:\n\t./tools/test.sh\n",
            ".editorconfig": "root = true\n[*]\nindent_style = space\nindent_size = 2\n",
            ".eslintrc.json": '{ "extends": ["eslint:recommended"], "rules": { "no-unused-vars": "error" } }\n',
        }.get(name, "")
        lines = [self.rng.randrange(len(pool)) for _ in range(self.rng.randint(0, 6))]
        return TextFile(path, "config", prefix.encode() + b"# notes\n", pool, lines)

    def binary(self, path: str) -> BinaryFile:
        return BinaryFile(path, self.rng.randbytes(_log_uniform(self.rng, 50 * 1024, 2 * 1024 * 1024)))

    def package(self, name: str, language: str, binaries: int) -> list[TextFile | BinaryFile]:
        """One package directory; its files in a plausible order (the caller may truncate)."""
        rng = self.rng
        base = f"packages/{name}"
        manifest_name = {"ts": "package.json", "go": "go.mod", "rs": "Cargo.toml", "py": "pyproject.toml"}[
            language
        ]
        out: list[TextFile | BinaryFile] = [
            self.manifest(f"{base}/{manifest_name}", language, name),
            self.doc(f"{base}/README.md", name),
        ]
        for config_name, chance in ((".gitignore", 0.5), ("Dockerfile", 0.25), ("Makefile", 0.3)):
            if rng.random() < chance:
                out.append(self.config(f"{base}/{config_name}"))
        if language == "ts" and rng.random() < 0.3:
            out.append(self.config(f"{base}/.eslintrc.json"))
        source_root = {"ts": "src", "go": "internal", "rs": "src", "py": f"src/{name.replace('-', '_')}"}[
            language
        ]
        subdirs = [""] + [self._word() for _ in range(rng.randint(0, 3))]
        for _ in range(rng.randint(10, 30)):
            sub = rng.choice(subdirs)
            stem = (
                f"{self._word()}_{self._word()}"
                if language in ("py", "rs", "go")
                else f"{self._word()}{self._word().capitalize()}"
            )
            extension = "tsx" if language == "ts" and rng.random() < 0.2 else language
            directory = f"{base}/{source_root}/{sub}" if sub else f"{base}/{source_root}"
            out.append(self.source(f"{directory}/{stem}.{extension}", language))
        tests = {
            "ts": ("tests", ".test.ts"),
            "go": ("internal", "_test.go"),
            "rs": ("tests", ".rs"),
            "py": ("tests", ".py"),
        }
        test_dir, test_suffix = tests[language]
        for _ in range(rng.randint(2, 8)):
            prefix = "test_" if language == "py" else ""
            out.append(self.source(f"{base}/{test_dir}/{prefix}{self._word()}{test_suffix}", language))
        for _ in range(rng.randint(0, 3)):
            out.append(self.doc(f"{base}/docs/{self._word()}.md", self._word()))
        for _ in range(rng.randint(0, 3)):
            out.append(self.text(f"{base}/testdata/{self._word()}.{rng.choice(_TEXT_EXTENSIONS)}"))
        for _ in range(binaries):
            out.append(self.binary(f"{base}/assets/{self._word()}.{rng.choice(_BINARY_EXTENSIONS)}"))
        return out

    def _word(self) -> str:
        line = self.pools.prose[self.rng.randrange(len(self.pools.prose))].decode()
        candidates = [
            token for token in line.replace(".", " ").split() if token.isalpha() and token.islower()
        ]
        return self.rng.choice(candidates) if candidates else "misc"


def _layout(rng: random.Random, pools: Pools, count: int) -> list[TextFile | BinaryFile]:
    """Exactly ``count`` files with unique paths: root files, docs, tools, then packages."""
    layout = _Layout(rng, pools)
    root: list[TextFile | BinaryFile] = [
        layout.manifest("package.json", "ts", "monorepo"),
        layout.manifest("pnpm-workspace.yaml", "ts", "workspace"),
        layout.doc("README.md", "Monorepo", 4096, 16384),
        layout.doc("CHANGELOG.md", "Changelog", 16384, 65536),
        layout.doc("LICENSE", "License", 2048, 4096),
        layout.config(".gitignore"),
        layout.config(".editorconfig"),
        layout.config("Makefile"),
        layout.config("Dockerfile"),
        layout.config(".github/workflows/ci.yml"),
    ]
    root += [
        layout.doc(f"docs/{layout._word()}-{index}.md", "Guide") for index in range(max(1, count // 200))
    ]
    root += [
        layout.source(f"tools/{layout._word()}_{index}.py", "py") for index in range(max(1, count // 500))
    ]
    root += [layout.binary(f"docs/images/diagram-{index}.png") for index in range(max(1, count // 2500))]
    files: dict[str, TextFile | BinaryFile] = {}
    for item in root:
        if len(files) < count:
            files.setdefault(item.path, item)
    binaries_left = max(2, count // 250)
    index = 0
    while len(files) < count:
        language = rng.choice(_LANGUAGES)
        name = f"{layout._word()}-{index:04d}"
        index += 1
        binaries = 1 if binaries_left > 0 and rng.random() < 0.3 else 0
        binaries_left -= binaries
        for item in layout.package(name, language, binaries):
            if len(files) >= count:
                break
            files.setdefault(item.path, item)
    return [files[path] for path in sorted(files)]


# --------------------------------------------------------------------- fast-import stream


def _plan_history(rng: random.Random, files: list[TextFile | BinaryFile], commits: int) -> list[list[int]]:
    """For each commit after the first, the indices of the files it edits."""
    editable = [index for index, item in enumerate(files) if isinstance(item, TextFile)]
    weights: list[float] = []
    total = 0.0
    for index in editable:
        item = files[index]
        assert isinstance(item, TextFile)
        total += _EDIT_WEIGHTS[item.kind] * rng.lognormvariate(0.0, 1.0) / (len(item.lines) + 1)
        weights.append(total)
    plan: list[list[int]] = []
    for _ in range(commits - 1):
        chosen = rng.choices(editable, cum_weights=weights, k=rng.choices((1, 2, 3), (5, 3, 2))[0])
        plan.append(sorted(set(chosen)))
    return plan


def _write_stream(
    out: IO[bytes], rng: random.Random, files: list[TextFile | BinaryFile], plan: list[list[int]]
) -> None:
    """Every version of every file as marked blobs, then the commits.

    A path's versions go out consecutively and newest first: fast-import deltifies
    each blob against the one sent before it, so the tip's blobs are stored whole
    and older versions as deltas on them, the layout ``git repack`` gives a
    served repository (a shallow fetch of the tip resolves no delta chains).
    """
    versions = [1] * len(files)
    for edits in plan:
        for index in edits:
            versions[index] += 1
    first_mark: list[int] = []
    mark = 1
    for index, item in enumerate(files):
        first_mark.append(mark)
        undo = array("q")
        if isinstance(item, TextFile):
            for _ in range(versions[index] - 1):
                item.edit(rng, undo)
        for version in reversed(range(versions[index])):
            if version < versions[index] - 1 and isinstance(item, TextFile):
                item.revert(undo)
            data = item.render()
            out.write(b"blob\nmark :%d\ndata %d\n%s\n" % (mark + version, len(data), data))
        mark += versions[index]
    used = [0] * len(files)
    for number in range(len(plan) + 1):
        if number == 0:
            changed = list(range(len(files)))
            message = "Initial import of the monorepo\n"
        else:
            changed = plan[number - 1]
            first = files[changed[0]].path
            package = first.split("/")[1] if first.startswith("packages/") else "repo"
            verb = rng.choice(_VERBS)
            message = f"{package}: {verb} {first.rsplit('/', 1)[-1]}\n"
            if rng.random() < 0.4:
                message += (
                    f"\nThis {verb}s the handling of {len(changed)} file(s) touched in change #{number}.\n"
                )
        author = _AUTHORS[rng.randrange(len(_AUTHORS))]
        when = EPOCH + number * COMMIT_SPACING_SECONDS
        encoded = message.encode()
        out.write(
            b"commit refs/heads/%s\nauthor %s %d +0000\ncommitter %s %d +0000\ndata %d\n%s"
            % (BRANCH.encode(), author.encode(), when, author.encode(), when, len(encoded), encoded)
        )
        for index in changed:
            out.write(b"M 100644 :%d %s\n" % (first_mark[index] + used[index], files[index].path.encode()))
            if number:
                used[index] += 1
        out.write(b"\n")
    out.write(b"done\n")


def build_corpus(path: Path, *, files: int, commits: int, seed: int = 0) -> str:
    """Create a bare repository at ``path`` (which must not exist) as described in the
    module docstring, configured and packed for serving; return the tip commit id."""
    if files < 1 or commits < 1:
        raise ValueError("a corpus needs at least one file and one commit")
    rng = random.Random(seed)
    pools = _make_pools(rng)
    layout = _layout(rng, pools, files)
    plan = _plan_history(rng, layout, commits)
    subprocess.run(
        ["git", "init", "--quiet", "--bare", f"--initial-branch={BRANCH}", str(path)],
        env=git_env(),
        check=True,
    )
    for key, value in {**SERVED_CONFIG, **EXTRA_SERVING_CONFIG}.items():
        git(path, "config", key, value)
    importer = subprocess.Popen(
        ["git", f"--git-dir={path}", "fast-import", "--quiet", "--done"], stdin=subprocess.PIPE, env=git_env()
    )
    assert importer.stdin is not None
    try:
        with importer.stdin as stream:
            _write_stream(stream, rng, layout, plan)
    finally:
        if importer.wait() != 0:
            raise RuntimeError(f"git fast-import failed with status {importer.returncode}")
    git(path, "repack", "-a", "-d", "-q", "--write-bitmap-index")
    git(path, "commit-graph", "write", "--reachable")
    git(path, "pack-refs", "--all")
    return git(path, "rev-parse", f"refs/heads/{BRANCH}").decode().strip()


def corpus_path(
    files: int, commits: int, seed: int = 0, cache: Path = DEFAULT_CACHE, *, quiet: bool = False
) -> Path:
    """The cached corpus for these parameters, building it first if needed."""
    target = cache / f"monorepo-v{CORPUS_VERSION}-f{files}-c{commits}-s{seed}.git"
    if (target / "packed-refs").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"building corpus {target.name} (cached for later runs) ...", flush=True)
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    try:
        build_corpus(scratch / "repo.git", files=files, commits=commits, seed=seed)
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch / "repo.git", target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not quiet:
        print(f"built {target.name} in {time.perf_counter() - started:.1f} s", flush=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--commits", type=int, default=40000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="corpus cache directory")
    arguments = parser.parse_args()
    print(corpus_path(arguments.files, arguments.commits, arguments.seed, arguments.cache))


if __name__ == "__main__":
    main()
