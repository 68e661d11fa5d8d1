"""The fsmonitor hook against a real change journal, across journal generations."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from artifactfs.overlay import store
from artifactfs.overlay.store import ChangeJournal
from artifactfs.worktree.fsmonitor import install_hook, journal_token


def ask(hook: Path, token: str) -> tuple[str, list[str]]:
    output = subprocess.run([str(hook), "2", token], capture_output=True, check=True)
    assert output.stderr == b""
    new_token, *paths = output.stdout.decode().split("\0")
    return new_token, [path for path in paths if path]


def test_tokens_survive_one_new_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = ChangeJournal(tmp_path / "journal")
    hook = install_hook(tmp_path / "gitdir", journal.path, journal.previous_path, git_version=(2, 43, 0))
    journal.append([b"a.txt"])
    token = journal_token(journal.path)
    assert ask(hook, token) == (token, [])
    journal.append([b"b.txt", b"dir/c.txt"])
    assert ask(hook, token)[1] == ["b.txt", "dir/c.txt"]
    journal.close()

    monkeypatch.setattr(store, "_JOURNAL_LIMIT", 8)  # the next open starts a new generation
    journal = ChangeJournal(tmp_path / "journal")
    journal.append([b"after/restart.txt"])
    new_token, changed = ask(hook, token)
    assert changed == ["b.txt", "dir/c.txt", "after/restart.txt"]
    assert new_token == journal_token(journal.path) != token
    assert ask(hook, new_token) == (new_token, [])
    journal.close()

    ChangeJournal(tmp_path / "journal").close()  # once more: the first token is two generations old
    assert ask(hook, token)[1] == ["/"]


@pytest.mark.parametrize(
    "token",
    [
        "",
        "artifactfs:none",
        "artifactfs:1:0",
        "artifactfs:1:2:3",
        "artifactfs::",
        "other:5:5",
        "artifactfs:x:1",
    ],
)
def test_unknown_tokens_mean_everything_changed(tmp_path: Path, token: str) -> None:
    journal = ChangeJournal(tmp_path / "journal")
    journal.append([b"a.txt"])
    hook = install_hook(tmp_path / "gitdir", journal.path, journal.previous_path, git_version=(2, 43, 0))
    assert ask(hook, token) == (journal_token(journal.path), ["/"])
    journal.close()


@pytest.mark.parametrize(
    ("command", "guarded"),
    [
        (["diff", "HEAD"], True),
        (["-C", "/somewhere", "--no-pager", "diff", "--stat", "HEAD~1"], True),
        (["diff-index", "--quiet", "HEAD"], True),
        (["diff", "--cached", "HEAD"], False),
        (["diff-index", "--staged", "HEAD"], False),
        (["diff"], False),
        (["status", "--porcelain"], False),
        (["-c", "core.pager=diff", "log", "-p"], False),
    ],
)
def test_old_git_gets_everything_for_a_diff_against_a_tree(
    tmp_path: Path, command: list[str], guarded: bool
) -> None:
    """git < 2.43 misreads fsmonitor-valid entries in diff-index; the hook makes such commands look at every file."""
    journal = ChangeJournal(tmp_path / "journal")
    hook = install_hook(tmp_path / "gitdir", journal.path, journal.previous_path, git_version=(2, 39, 5))
    token = journal_token(journal.path)
    # The hook's parent is a process whose command line is "git <command>", as when git runs it.
    script = f"{shlex.quote(str(hook))} 2 {shlex.quote(token)}; :"
    output = subprocess.run(
        ["bash", "-c", f'exec -a git sh -c {shlex.quote(script)} "$@"', "bash", *command],
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert output.split("\0")[1:] == (["/", ""] if guarded else [""])
    fixed = install_hook(tmp_path / "gitdir", journal.path, journal.previous_path, git_version=(2, 43, 0))
    assert "cmdline" not in fixed.read_text()
    journal.close()
