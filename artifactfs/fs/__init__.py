"""FUSE operations: the kernel-facing layer over the merged tree."""
