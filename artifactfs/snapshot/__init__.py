"""Immutable snapshots of a commit's tree, parsed lazily from Git tree objects."""
