"""The copy-on-write overlay: user changes on top of the immutable base tree."""
