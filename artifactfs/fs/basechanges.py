"""Which paths the kernel knows that a newly published base shows differently.

The kernel keeps entries, attributes and file pages of unchanged base paths
for a long time (see :data:`~artifactfs.fs.operations.CACHE_TIMEOUT` and
``keep_cache``). When HEAD moves, paths without overlay rows show the new
base, so everything the kernel may hold about a path whose base entry
changed, appeared or disappeared must be forgotten. Only paths the kernel
knows (or names below directories it knows: negative entries) can be cached,
so only those are compared, entry by entry; unchanged subtrees cost nothing
beyond their top.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from artifactfs.snapshot.entries import BaseEntry, BaseTree, EntryKind


def _is_dir(entry: BaseEntry | None) -> bool:
    return entry is not None and entry.kind is EntryKind.DIR


def changed_paths(old: BaseTree, new: BaseTree, known: Iterable[str]) -> Iterator[str]:
    """Known paths whose base entry differs, and names that differ in known directories (once each).

    The root is compared like any directory but never reported: it always exists.
    """
    reported: set[str] = set()
    for path in known:
        before = old.entry(path)
        after = new.entry(path)
        if before == after:
            continue
        if path and path not in reported:
            reported.add(path)
            yield path
        if not (_is_dir(before) or _is_dir(after)):
            continue
        before_children = (old.children(path) or {}) if _is_dir(before) else {}
        after_children = (new.children(path) or {}) if _is_dir(after) else {}
        for name in before_children.keys() | after_children.keys():
            if before_children.get(name) != after_children.get(name):
                child = f"{path}/{name}" if path else name
                if child not in reported:
                    reported.add(child)
                    yield child
