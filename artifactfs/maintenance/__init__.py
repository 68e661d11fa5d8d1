"""Offline and online upkeep of the state root: ``fsck`` and ``gc``."""
