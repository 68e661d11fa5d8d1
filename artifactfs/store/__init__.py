"""Local object storage: pack-stream parsing and the content-addressed blob cache."""
