"""ArtifactFS: mount any Git remote as a lazily hydrated, writable working tree."""

__version__ = "0.1.0"
