"""``artifactfs gc``: keep the blob caches (the shared one and each owner's) under one size bound.

Every cached blob can be fetched again, so any of them may go: the least
recently used (latest of access and modification time) are deleted first
until the cache fits. Nothing is pinned: an overlay row that still points at
a base blob, or a file nobody has read for a while, simply hydrates again on
the next read. Files open at the time keep working (their descriptor holds
the data). Blobs used within ``keep_recent`` seconds are never evicted, so a
read racing the collector does not lose the blob it was just handed.

Access times follow the filesystem's ``relatime`` rules, so "recent" has about
a day's resolution for blobs read more than once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from artifactfs.store.blobcache import BlobCache


@dataclass(frozen=True)
class GcResult:
    before_bytes: int
    after_bytes: int
    evicted_blobs: int
    evicted_bytes: int
    kept_recent_blobs: int


def collect(caches: Sequence[BlobCache], max_bytes: int, *, keep_recent: float = 60.0) -> GcResult:
    """Evict least recently used blobs until ``caches`` (the shared one and each owner's) together hold
    at most ``max_bytes``."""
    entries: list[tuple[float, int, str, BlobCache]] = []
    for cache in caches:
        for oid in cache.iter_oids():
            try:
                info = os.stat(cache.path(oid))
            except FileNotFoundError:
                continue  # evicted by someone else meanwhile
            entries.append((max(info.st_atime, info.st_mtime), info.st_size, oid, cache))
    entries.sort(key=lambda entry: entry[:3])
    total = sum(entry[1] for entry in entries)
    before = total
    cutoff = time.time() - keep_recent
    evicted = evicted_bytes = kept_recent = 0
    for last_used, size, oid, cache in entries:
        if total <= max_bytes:
            break
        if last_used > cutoff:
            kept_recent += 1
            continue
        cache.remove(oid)
        total -= size
        evicted += 1
        evicted_bytes += size
    return GcResult(before, total, evicted, evicted_bytes, kept_recent)
