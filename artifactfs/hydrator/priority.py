"""The hydration priority classes: the one place that decides what is fetched first.

Read top to bottom, the tables below are the policy. A path is matched against
user overrides first, then the built-in patterns class by class in order; the
first match wins. A blob larger than :data:`BINARY_SIZE_THRESHOLD` is always
``binary`` unless a user override names it. Demand reads are not a class: they
always go before every class (see :mod:`artifactfs.hydrator.queue`).
"""

from __future__ import annotations

import enum
import fnmatch
import posixpath
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from artifactfs.errors import UsageError


class PriorityClass(enum.IntEnum):
    """Background hydration order; lower values are fetched first."""

    MANIFEST = 0
    CONFIG = 1
    SOURCE = 2
    DOCS = 3
    TEXT = 4
    BINARY = 5

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> PriorityClass:
        try:
            return cls[label.upper()]
        except KeyError:
            names = ", ".join(c.label for c in cls)
            raise UsageError(f"unknown priority class {label!r} (expected one of: {names})") from None


BINARY_SIZE_THRESHOLD = 4 << 20
"""Blobs above this size are fetched last whatever their name says."""

# Built-in rules. File-name globs match the last path component, case-insensitively.
_NAME_GLOBS: dict[PriorityClass, tuple[str, ...]] = {
    PriorityClass.MANIFEST: (
        "package.json",
        "package-lock.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "pnpm-workspace.yaml",
        "lerna.json",
        "nx.json",
        "turbo.json",
        "tsconfig.json",
        "tsconfig.*.json",
        "deno.json",
        "go.mod",
        "go.sum",
        "go.work",
        "cargo.toml",
        "cargo.lock",
        "pyproject.toml",
        "setup.py",
        "setup.cfg",
        "requirements*.txt",
        "pipfile",
        "pipfile.lock",
        "poetry.lock",
        "uv.lock",
        "environment.yml",
        "gemfile",
        "gemfile.lock",
        "*.gemspec",
        "pom.xml",
        "build.gradle",
        "build.gradle.kts",
        "settings.gradle",
        "settings.gradle.kts",
        "gradle.properties",
        "build.sbt",
        "composer.json",
        "composer.lock",
        "mix.exs",
        "mix.lock",
        "pubspec.yaml",
        "pubspec.lock",
        "package.swift",
        "podfile",
        "podfile.lock",
        "*.csproj",
        "*.fsproj",
        "*.vbproj",
        "*.sln",
        "packages.config",
        "directory.build.props",
        "cmakelists.txt",
        "meson.build",
        "build.bazel",
        "workspace",
        "workspace.bazel",
        "module.bazel",
        "buck",
        "stack.yaml",
        "*.cabal",
        "dune-project",
        "rebar.config",
        "deps.edn",
        "project.clj",
        "flake.nix",
        "flake.lock",
        "default.nix",
        "vcpkg.json",
        "conanfile.txt",
        "conanfile.py",
    ),
    PriorityClass.CONFIG: (
        ".gitignore",
        ".gitattributes",
        ".gitmodules",
        ".editorconfig",
        ".dockerignore",
        ".npmrc",
        ".nvmrc",
        ".python-version",
        ".ruby-version",
        ".tool-versions",
        ".env.example",
        "dockerfile",
        "dockerfile.*",
        "*.dockerfile",
        "docker-compose*.yml",
        "docker-compose*.yaml",
        "compose.yml",
        "compose.yaml",
        "makefile",
        "gnumakefile",
        "*.mk",
        "justfile",
        "taskfile.yml",
        "tox.ini",
        "noxfile.py",
        "pytest.ini",
        ".flake8",
        ".pylintrc",
        "mypy.ini",
        ".ruff.toml",
        "ruff.toml",
        ".pre-commit-config.yaml",
        ".eslintrc*",
        "eslint.config.*",
        ".prettierrc*",
        "prettier.config.*",
        "babel.config.*",
        ".babelrc",
        "jest.config.*",
        "vite.config.*",
        "webpack.config.*",
        "rollup.config.*",
        ".browserslistrc",
        ".clang-format",
        ".clang-tidy",
        "codeowners",
        ".travis.yml",
        ".gitlab-ci.yml",
        "jenkinsfile",
        "azure-pipelines.yml",
        "bitbucket-pipelines.yml",
        ".bazelrc",
        ".bazelversion",
        "rust-toolchain",
        "rust-toolchain.toml",
    ),
}

# Directory globs: every file below a matching directory path belongs to the class.
_DIRECTORY_GLOBS: dict[PriorityClass, tuple[str, ...]] = {
    PriorityClass.CONFIG: (".github", ".circleci", ".devcontainer", ".vscode", ".cargo"),
}

_EXTENSIONS: dict[PriorityClass, frozenset[str]] = {
    PriorityClass.SOURCE: frozenset(
        {
            "c",
            "h",
            "cc",
            "cpp",
            "cxx",
            "hh",
            "hpp",
            "hxx",
            "inl",
            "m",
            "mm",
            "go",
            "rs",
            "py",
            "pyi",
            "pyx",
            "pxd",
            "js",
            "mjs",
            "cjs",
            "jsx",
            "ts",
            "mts",
            "cts",
            "tsx",
            "vue",
            "svelte",
            "java",
            "kt",
            "kts",
            "scala",
            "sc",
            "groovy",
            "clj",
            "cljs",
            "rb",
            "erb",
            "rake",
            "php",
            "cs",
            "fs",
            "vb",
            "swift",
            "dart",
            "lua",
            "pl",
            "pm",
            "r",
            "jl",
            "ex",
            "exs",
            "erl",
            "hrl",
            "hs",
            "ml",
            "mli",
            "elm",
            "zig",
            "nim",
            "v",
            "sv",
            "vhd",
            "sh",
            "bash",
            "zsh",
            "fish",
            "ps1",
            "bat",
            "cmd",
            "sql",
            "proto",
            "thrift",
            "graphql",
            "gql",
            "css",
            "scss",
            "sass",
            "less",
            "html",
            "htm",
            "xml",
            "xsl",
            "json",
            "jsonc",
            "yaml",
            "yml",
            "toml",
            "ini",
            "cfg",
            "conf",
            "bzl",
            "cmake",
            "gradle",
            "nix",
            "tf",
            "hcl",
            "asm",
            "s",
            "cu",
            "cuh",
            "wgsl",
            "glsl",
            "hlsl",
        }
    ),
    PriorityClass.DOCS: frozenset(
        {"md", "markdown", "rst", "adoc", "asciidoc", "txt", "tex", "org", "pod", "man", "1", "3", "5", "8"}
    ),
    PriorityClass.BINARY: frozenset(
        {
            "png",
            "jpg",
            "jpeg",
            "gif",
            "bmp",
            "ico",
            "icns",
            "webp",
            "avif",
            "tif",
            "tiff",
            "psd",
            "svgz",
            "mp3",
            "wav",
            "ogg",
            "flac",
            "aac",
            "m4a",
            "mp4",
            "m4v",
            "mov",
            "avi",
            "mkv",
            "webm",
            "zip",
            "gz",
            "tgz",
            "bz2",
            "xz",
            "zst",
            "7z",
            "rar",
            "tar",
            "jar",
            "war",
            "ear",
            "whl",
            "egg",
            "deb",
            "rpm",
            "dmg",
            "iso",
            "apk",
            "ipa",
            "exe",
            "dll",
            "so",
            "dylib",
            "a",
            "lib",
            "o",
            "obj",
            "class",
            "pyc",
            "wasm",
            "bin",
            "dat",
            "db",
            "sqlite",
            "pdf",
            "doc",
            "docx",
            "xls",
            "xlsx",
            "ppt",
            "pptx",
            "ttf",
            "otf",
            "woff",
            "woff2",
            "eot",
            "pak",
            "pb",
            "onnx",
            "pt",
            "pth",
            "ckpt",
            "safetensors",
            "h5",
            "npy",
            "npz",
            "parquet",
            "arrow",
            "pkl",
        }
    ),
}

_DOC_NAMES: frozenset[str] = frozenset(
    {
        "readme",
        "license",
        "licence",
        "copying",
        "changelog",
        "changes",
        "authors",
        "contributing",
        "notice",
        "history",
    }
)


@dataclass(frozen=True)
class PriorityRule:
    """A user override: paths matching ``glob`` belong to ``priority_class``.

    A glob containing ``/`` matches the whole repository-relative path (``**``
    spans directories); one without matches the file name only.
    """

    glob: str
    priority_class: PriorityClass

    @classmethod
    def parse(cls, text: str) -> PriorityRule:
        label, sep, glob = text.partition("=")
        if not sep or not glob:
            raise UsageError(f"priority rule {text!r} is not of the form CLASS=GLOB")
        return cls(glob.strip(), PriorityClass.from_label(label.strip()))

    def matches(self, path: str) -> bool:
        if "/" in self.glob:
            return fnmatch.fnmatchcase(path, self.glob) or fnmatch.fnmatchcase(
                path, self.glob.replace("**/", "")
            )
        return fnmatch.fnmatchcase(posixpath.basename(path), self.glob)


@dataclass(frozen=True)
class Classifier:
    """Assigns a :class:`PriorityClass` to a path, overrides first."""

    overrides: Sequence[PriorityRule] = field(default_factory=tuple)

    def classify(self, path: str, size: int | None = None) -> PriorityClass:
        for rule in self.overrides:
            if rule.matches(path):
                return rule.priority_class
        if size is not None and size > BINARY_SIZE_THRESHOLD:
            return PriorityClass.BINARY
        return builtin_class(path)


@dataclass(frozen=True)
class _CompiledGlobs:
    """A set of globs matched as one exact-name lookup plus one regular expression."""

    exact: frozenset[str]
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, globs: Iterable[str]) -> _CompiledGlobs:
        globs = tuple(globs)
        wildcards = [glob for glob in globs if any(char in glob for char in "*?[")]
        exact = frozenset(glob for glob in globs if glob not in wildcards)
        pattern = re.compile("|".join(fnmatch.translate(glob) for glob in wildcards)) if wildcards else None
        return cls(exact, pattern)

    def matches(self, name: str) -> bool:
        return name in self.exact or (self.pattern is not None and self.pattern.match(name) is not None)


_COMPILED_NAMES = {priority_class: _CompiledGlobs.of(globs) for priority_class, globs in _NAME_GLOBS.items()}
_COMPILED_DIRECTORIES = {
    priority_class: _CompiledGlobs.of(globs) for priority_class, globs in _DIRECTORY_GLOBS.items()
}


def builtin_class(path: str) -> PriorityClass:
    """The class of a path by the built-in tables alone."""
    directory, name = posixpath.split(path)
    lowered = name.lower()
    for priority_class, names in _COMPILED_NAMES.items():
        if names.matches(lowered):
            return priority_class
    if directory:
        parts = directory.lower().split("/")
        for priority_class, directories in _COMPILED_DIRECTORIES.items():
            if any(directories.matches(part) for part in parts):
                return priority_class
    stem, _, extension = lowered.rpartition(".")
    if not stem:  # no extension, or a dotfile such as ".bashrc"
        base = lowered.lstrip(".")
        return PriorityClass.DOCS if base in _DOC_NAMES else PriorityClass.TEXT
    for priority_class in (PriorityClass.SOURCE, PriorityClass.DOCS, PriorityClass.BINARY):
        if extension in _EXTENSIONS[priority_class]:
            return priority_class
    if stem.split(".")[0] in _DOC_NAMES:
        return PriorityClass.DOCS
    return PriorityClass.TEXT


def load_rules(config_file: Path | None, flag_rules: Iterable[str]) -> tuple[PriorityRule, ...]:
    """Overrides from ``--priority CLASS=GLOB`` flags, then from the config file's ``[priority]`` table.

    The config file maps class names to lists of globs::

        [priority]
        manifest = ["BUILD", "*.bzl"]
        binary = ["vendor/**"]
    """
    rules = [PriorityRule.parse(text) for text in flag_rules]
    if config_file is not None and config_file.exists():
        try:
            document = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise UsageError(f"cannot read config file {config_file}: {error}") from error
        table = document.get("priority", {})
        if not isinstance(table, dict):
            raise UsageError(f"{config_file}: [priority] must be a table")
        for label, globs in table.items():
            priority_class = PriorityClass.from_label(label)
            if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs):
                raise UsageError(f"{config_file}: priority.{label} must be a list of glob strings")
            rules.extend(PriorityRule(glob, priority_class) for glob in globs)
    return tuple(rules)
