"""Scrubbing credentials from any text that may be shown, logged or put in a
process title: the one rule for what counts as a secret in text.

Standard library only: the ``artifactfs`` command scrubs its own command line
with it before importing anything else.
"""

from __future__ import annotations

import re

_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/\s?#@:]*)(?::[^/\s?#]*)?@")
_AUTH_HEADER_RE = re.compile(r"(?i)\b((?:proxy-)?authorization\s*[:=]\s*)[^\r\n]+")
_PASSWORD_LINE_RE = re.compile(r"(?im)^(password\s*=).*$")


def redact(text: str) -> str:
    """Scrub passwords from URL userinfo, ``Authorization`` header values and
    ``password=`` lines (git credential format) in arbitrary text."""
    text = _USERINFO_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}@" if m.group(2) else m.group(1), text)
    text = _AUTH_HEADER_RE.sub(r"\1<redacted>", text)
    return _PASSWORD_LINE_RE.sub(r"\1<redacted>", text)
