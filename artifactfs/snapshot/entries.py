"""The vocabulary shared by every layer that looks at a tree: entry kinds and base entries."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class EntryKind(enum.StrEnum):
    """The one vocabulary of what an entry is: in a Git tree, an overlay row and a view node.

    The values are what the overlay database stores.
    """

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    GITLINK = "gitlink"
    SPECIAL = "special"
    """Only in the overlay: a FIFO, socket or device node."""
    WHITEOUT = "whiteout"
    """Only in the overlay: a deleted base entry, hidden from the view."""


@dataclass(frozen=True, slots=True)
class BaseEntry:
    """One entry of a Git tree: what it is, its Git mode and the object it names."""

    kind: EntryKind
    mode: int
    oid: str


class BaseTree(Protocol):
    """Read access to a published tree by path ("" is the root, "/"-separated)."""

    def entry(self, path: str) -> BaseEntry | None: ...

    def children(self, path: str) -> Mapping[str, BaseEntry] | None: ...
