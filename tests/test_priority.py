"""Priority classes: the built-in table, overrides and rule loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifactfs.errors import UsageError
from artifactfs.hydrator.priority import (
    BINARY_SIZE_THRESHOLD,
    Classifier,
    PriorityClass,
    PriorityRule,
    builtin_class,
    load_rules,
)

M, C, S, D, T, B = (
    PriorityClass.MANIFEST,
    PriorityClass.CONFIG,
    PriorityClass.SOURCE,
    PriorityClass.DOCS,
    PriorityClass.TEXT,
    PriorityClass.BINARY,
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("package.json", M),
        ("web/package.json", M),
        ("go.mod", M),
        ("svc/go.sum", M),
        ("crates/x/Cargo.toml", M),
        ("CARGO.LOCK", M),
        ("pyproject.toml", M),
        ("requirements-dev.txt", M),
        ("tsconfig.build.json", M),
        ("app/demo.gemspec", M),
        ("CMakeLists.txt", M),
        ("src/App.csproj", M),
        (".gitignore", C),
        ("sub/.gitattributes", C),
        ("Dockerfile", C),
        ("Dockerfile.dev", C),
        ("api.dockerfile", C),
        ("Makefile", C),
        ("rules.mk", C),
        ("docker-compose.prod.yml", C),
        (".github/workflows/ci.yml", C),
        ("a/.vscode/settings.json", C),
        (".eslintrc.json", C),
        ("src/main.py", S),
        ("web/index.TS", S),
        ("lib/x.rs", S),
        ("conf/settings.yaml", S),
        ("README.md", D),
        ("docs/guide.rst", D),
        ("notes.txt", D),
        ("README", D),
        ("LICENSE", D),
        ("CHANGELOG.old", D),
        (".authors", D),
        ("NOTES", T),
        ("data.csv", T),
        (".bashrc", T),
        ("Procfile", T),
        ("weird.unknownext", T),
        ("img/logo.PNG", B),
        ("dist/a.tar.gz", B),
        ("lib/x.so", B),
        ("model.safetensors", B),
    ],
)
def test_builtin_class_table(path: str, expected: PriorityClass) -> None:
    assert builtin_class(path) is expected
    assert Classifier().classify(path) is expected


def test_name_tables_win_over_directory_and_extension() -> None:
    # A manifest name under a config directory is still a manifest; a .json
    # that is not a known manifest is source; a .txt manifest glob beats docs.
    assert builtin_class(".github/package.json") is M
    assert builtin_class("src/data.json") is S
    assert builtin_class("requirements.txt") is M and builtin_class("requirement.txt") is D


def test_size_threshold_makes_large_blobs_binary() -> None:
    classifier = Classifier()
    assert classifier.classify("go.mod", BINARY_SIZE_THRESHOLD) is M
    assert classifier.classify("go.mod", BINARY_SIZE_THRESHOLD + 1) is B
    assert classifier.classify("src/big.py", BINARY_SIZE_THRESHOLD + 1) is B
    assert classifier.classify("src/big.py", None) is S
    # A user override wins even over the size threshold.
    overridden = Classifier((PriorityRule.parse("source=*.py"),))
    assert overridden.classify("src/big.py", 10 * BINARY_SIZE_THRESHOLD) is S


def test_override_without_slash_matches_the_file_name_anywhere() -> None:
    classifier = Classifier((PriorityRule.parse("binary=*.py"),))
    assert classifier.classify("main.py") is B
    assert classifier.classify("deep/down/tool.py") is B
    assert classifier.classify("deep/down/tool.pyi") is S  # not matched: built-in table
    assert not PriorityRule.parse("binary=*.py").matches("py/README.md")


def test_override_with_slash_matches_the_whole_path() -> None:
    vendor = PriorityRule.parse("binary=vendor/**")
    assert vendor.matches("vendor/a.go") and vendor.matches("vendor/x/y/z.go")
    assert not vendor.matches("src/vendor/a.go")
    nested = PriorityRule.parse("manifest=src/**/BUILD")
    assert nested.matches("src/BUILD")  # "**/" also matches no directory at all
    assert nested.matches("src/a/b/BUILD")
    assert not nested.matches("BUILD") and not nested.matches("src/BUILD.bak")
    docs = PriorityRule.parse("docs=docs/*.py")
    assert docs.matches("docs/conf.py") and not docs.matches("other/docs/conf.py")
    classifier = Classifier((nested, vendor))
    assert classifier.classify("src/x/BUILD") is M
    assert classifier.classify("BUILD") is T


def test_first_matching_override_wins() -> None:
    rules = (PriorityRule.parse("docs=special.py"), PriorityRule.parse("binary=*.py"))
    classifier = Classifier(rules)
    assert classifier.classify("a/special.py") is D
    assert classifier.classify("a/other.py") is B


def test_rule_parsing_and_errors() -> None:
    assert PriorityRule.parse(" Binary = *.psd ") == PriorityRule("*.psd", B)
    assert PriorityRule.parse("manifest=a=b") == PriorityRule("a=b", M)
    for text in ("binary", "binary=", "=*.py", "bogus=*.py", ""):
        with pytest.raises(UsageError):
            PriorityRule.parse(text)
    with pytest.raises(UsageError, match="bogus"):
        PriorityClass.from_label("bogus")
    assert PriorityClass.from_label("DOCS") is D and D.label == "docs"


def test_load_rules_from_flags_then_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[mount]\nother = 1\n\n[priority]\nmanifest = ["BUILD", "*.bzl"]\nbinary = ["vendor/**"]\n'
    )
    rules = load_rules(config, ["docs=*.py"])
    assert rules == (
        PriorityRule("*.py", D),
        PriorityRule("BUILD", M),
        PriorityRule("*.bzl", M),
        PriorityRule("vendor/**", B),
    )
    classifier = Classifier(rules)
    assert classifier.classify("tools/defs.bzl") is M
    assert classifier.classify("vendor/lib/x.c") is B
    assert classifier.classify("vendor/lib/x.py") is D  # the flag comes first


def test_load_rules_without_config(tmp_path: Path) -> None:
    assert load_rules(None, []) == ()
    assert load_rules(tmp_path / "absent.toml", ["binary=*.py"]) == (PriorityRule("*.py", B),)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert load_rules(empty, []) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[priority\n", "cannot read config file"),
        ("priority = 3\n", "must be a table"),
        ('[priority]\nbinary = "*.png"\n', "priority.binary must be a list"),
        ('[priority]\nbinary = ["*.png", 3]\n', "priority.binary must be a list"),
        ('[priority]\nhuge = ["*.png"]\n', "unknown priority class 'huge'"),
    ],
)
def test_load_rules_config_errors(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_rules(config, [])
