"""Git LFS: files whose tree blob is an LFS pointer show the object the pointer names.

``pointer`` parses pointer files; ``objects`` stores LFS objects in the shared
blob cache (by sha256); ``batch`` is the client of the LFS batch API;
``downloads`` keeps the objects in flight (readers' own requests, batches);
``attributes`` asks git which paths carry ``filter=lfs``; ``files`` ties them
together for the FUSE layer (sizes and content of LFS paths, background
order, prefetch); ``gitconfig`` sets up git-lfs in the gitdir.
"""
