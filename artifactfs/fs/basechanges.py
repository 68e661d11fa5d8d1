"""Which paths the kernel may hold something about that a newly published base shows differently.

The kernel keeps entries, attributes and file pages of unchanged base paths
for a long time (see :data:`~artifactfs.fs.operations.CACHE_TIMEOUT` and
``keep_cache``). When HEAD moves, paths without overlay rows show the new
base, so whatever the kernel holds about a path whose base entry changed,
appeared or disappeared must be forgotten. The kernel can only hold entries
(negative ones included) in directories it knows, so the two trees are
compared from the root down through changed directories the kernel knows:
the cost follows the change, not the size of the tree.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from artifactfs.snapshot.entries import BaseEntry, BaseTree, EntryKind


def _is_dir(entry: BaseEntry | None) -> bool:
    return entry is not None and entry.kind is EntryKind.DIR


def changed_paths(old: BaseTree, new: BaseTree, known: Collection[str]) -> Iterator[str]:
    """Names that differ between ``old`` and ``new`` in the directories of ``known`` (the paths the
    kernel knows; the root always), each once, parents before their children."""
    pending = [""]
    while pending:
        directory = pending.pop()
        before = old.children(directory) or {}
        after = new.children(directory) or {}
        for name in sorted(before.keys() | after.keys()):
            was, now = before.get(name), after.get(name)
            if was == now:
                continue
            path = f"{directory}/{name}" if directory else name
            yield path
            if (_is_dir(was) or _is_dir(now)) and path in known:
                pending.append(path)
