"""What the FUSE layer derives from the overlay view, kept until the view's version changes.

Tree-wide tools (``find``, ``grep -r``, ``git add -A``) ask for the same
unchanged base paths and directories over and over. Resolving a path through
the view and merging a directory's rows with its base listing are pure
functions of the view's version (:attr:`OverlayView.version`: the overlay's
committed row changes and the published base), so this cache answers them
from memory until the version moves, then forgets everything at once.

Only nodes of unchanged base entries are kept per path: a node with a data
file carries values (its times) that writes change without a new version.
For the same reason a listing's entries with data files are looked up afresh
each time the listing is handed out.
"""

from __future__ import annotations

from artifactfs.overlay.view import Node, OverlayView, ViewVersion

Listing = list[tuple[bytes, Node]]
"""A merged directory listing: encoded names and nodes, sorted by name."""


class ViewCache:
    """Base nodes by path and directory listings by path, for one version of the view."""

    def __init__(self, view: OverlayView) -> None:
        self._view = view
        self._version: ViewVersion | None = None
        self._nodes: dict[str, Node] = {}
        self._listings: dict[str, tuple[Listing, list[int]]] = {}
        """Listings by directory, with the positions of their entries that have data files."""

    def _current(self) -> None:
        version = self._view.version
        if version != self._version:
            self._version = version
            self._nodes.clear()
            self._listings.clear()

    def lookup(self, path: str) -> Node | None:
        """What ``path`` is in the merged view (None: nothing there)."""
        self._current()
        node = self._nodes.get(path)
        if node is None:
            node = self._view.lookup(path)
            if node is not None and not node.in_overlay:
                self._nodes[path] = node
        return node

    def listing(self, path: str) -> Listing:
        """The merged listing of directory ``path``, prepared once per version."""
        self._current()
        cached = self._listings.get(path)
        if cached is None:
            listing = [
                (name.encode("utf-8", "surrogateescape"), node) for name, node in self._view.list_dir(path)
            ]
            written = [index for index, (_, node) in enumerate(listing) if node.data_path is not None]
            cached = self._listings[path] = (listing, written)
        listing, written = cached
        if not written:
            return listing
        fresh = list(listing)
        for index in written:
            name, node = listing[index]
            fresh[index] = (name, self._view.lookup(node.path) or node)
        return fresh
