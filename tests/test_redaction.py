"""Credential redaction: passwords never reach logs or process titles."""

from __future__ import annotations

import pytest

from artifactfs.redaction import redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://alice:s3cret@example.com/r.git", "https://alice@example.com/r.git"),
        ("https://:s3cret@example.com/r.git", "https://example.com/r.git"),
        ("http://tok:x-oauth@host:8080/a", "http://tok@host:8080/a"),
        (
            "fetch https://u:p1@a.com/x and https://v:p2@b.com/y failed",
            "fetch https://u@a.com/x and https://v@b.com/y failed",
        ),
        ("https://bob@example.com/r.git", "https://bob@example.com/r.git"),
        ("Authorization: Bearer abc.def", "Authorization: <redacted>"),
        ("proxy-authorization=Basic Zm9vOmJhcg==\nnext", "proxy-authorization=<redacted>\nnext"),
        (
            "protocol=https\nhost=x\nusername=a\npassword=hunter2\n",
            "protocol=https\nhost=x\nusername=a\npassword=<redacted>\n",
        ),
        ("no secrets here: https://example.com/r.git", "no secrets here: https://example.com/r.git"),
        ("", ""),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_never_leaks_the_password() -> None:
    for password in ("p@ss", "a:b", "x%40y", "p/w#?"[:1] + "ss"):
        text = f"error talking to https://user:{password}@host/repo.git: refused"
        assert password not in redact(text).replace("user@host", "")
