"""Parsing, validating and displaying remote URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifactfs.errors import InvalidRemoteError
from artifactfs.remote import RemoteURL, redact
from artifactfs.remote.url import SshTarget


def test_https_url_with_percent_encoded_credentials() -> None:
    remote = RemoteURL.parse("https://al%40ice:to%3Aken@example.com:8443/org/repo.git/")
    assert remote.kind == "http"
    assert remote.url == "https://example.com:8443/org/repo.git"
    assert remote.username == "al@ice"
    assert remote.password == "to:ken"
    assert remote.redacted() == "https://al%40ice@example.com:8443/org/repo.git"
    assert "to:ken" not in repr(remote) and "to%3Aken" not in repr(remote)
    assert "ken" not in str(remote)


def test_plain_http_url_and_ipv6_host() -> None:
    assert RemoteURL.parse("http://example.com/repo.git") == RemoteURL("http", "http://example.com/repo.git")
    assert RemoteURL.parse("HTTPS://[::1]:8080/r").url == "https://[::1]:8080/r"


def test_username_without_password_is_kept_for_the_credential_helper() -> None:
    remote = RemoteURL.parse("https://bob@example.com/r.git")
    assert (remote.username, remote.password) == ("bob", None)
    assert remote.redacted() == "https://bob@example.com/r.git"


def test_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "my repo.git"
    repo.mkdir()
    assert RemoteURL.parse(str(repo)) == RemoteURL("local", str(repo))
    assert RemoteURL.parse(f"file://{tmp_path}/my%20repo.git").url == str(repo)
    monkeypatch.chdir(tmp_path)
    assert RemoteURL.parse("my repo.git").url == str(repo)
    assert RemoteURL.parse("./my repo.git/").redacted() == str(repo)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("http://", "no host"),
        ("https:///x", "no host"),
        ("https://example.com:99999/r", "out of range"),
        ("https://example.com:abc/r", "malformed"),
        ("https://example.com:/r", "empty port"),
        ("https://exa mple.com/r", "whitespace"),
        ("https://example.com/r\n", "control"),
        ("https://example.com/r?x=1", "query"),
        ("ssh://u:pw@example.com/r.git", "password"),
        ("ssh://-oProxyCommand=x/r", "must not start"),
        ("host:", "no repository path"),
        ("git://example.com/r.git", "unsupported"),
        ("-x:y", "must not start"),
        ("file://otherhost/srv/r.git", "host"),
        ("://nothing", "malformed"),
    ],
)
def test_rejected_urls(text: str, fragment: str) -> None:
    with pytest.raises(InvalidRemoteError) as info:
        RemoteURL.parse(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_local_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.git"
    with pytest.raises(InvalidRemoteError, match="does not exist") as info:
        RemoteURL.parse(str(missing))
    assert str(missing) in str(info.value)


def test_rejection_message_never_contains_the_password() -> None:
    with pytest.raises(InvalidRemoteError) as info:
        RemoteURL.parse("https://user:hunter2@example.com:bad/r")
    assert "hunter2" not in str(info.value)
    assert "user@example.com" in str(info.value)


def test_redact_scrubs_userinfo_headers_and_credential_lines() -> None:
    text = (
        "fatal: unable to access 'https://user:hunter2@host/r.git/' and http://:tok3n@h/x\n"
        "Authorization: Basic dXNlcjpodW50ZXIy\n"
        "password=hunter2\nusername=user"
    )
    scrubbed = redact(text)
    for secret in ("hunter2", "tok3n", "dXNlcjpodW50ZXIy"):
        assert secret not in scrubbed
    assert "https://user@host/r.git/" in scrubbed
    assert "username=user" in scrubbed
    assert redact("nothing secret at https://host/x") == "nothing secret at https://host/x"


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("ssh://git@example.com/org/r.git", SshTarget("example.com", "/org/r.git", "git")),
        ("git+ssh://example.com:2222/~bob/r", SshTarget("example.com", "~bob/r", None, 2222)),
        ("ssh://[::1]:22/a%20b", SshTarget("::1", "/a b", None, 22)),
        ("git@github.com:org/repo.git", SshTarget("github.com", "org/repo.git", "git")),
        ("host:path/x", SshTarget("host", "path/x")),
        ("[git@host:2200]:srv/r", SshTarget("host", "srv/r", "git", 2200)),
        ("[::1]:r.git", SshTarget("::1", "r.git")),
    ],
)
def test_ssh_remotes(text: str, target: SshTarget) -> None:
    remote = RemoteURL.parse(text)
    assert (remote.kind, remote.url, remote.ssh) == ("ssh", text, target)
    assert remote.redacted() == text


def test_colon_after_a_slash_or_a_drive_letter_is_a_local_path(tmp_path: Path) -> None:
    repo = tmp_path / "a:b.git"
    repo.mkdir()
    assert RemoteURL.parse(str(repo)).kind == "local"
    with pytest.raises(InvalidRemoteError, match="does not exist"):
        RemoteURL.parse("C:\\src\\repo")
