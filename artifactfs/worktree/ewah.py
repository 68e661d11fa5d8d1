"""git's on-disk EWAH bitmaps and variable-width integers, as the index extensions use them.

Only writing is needed: the mount writes a fresh index whose fsmonitor and
untracked-cache extensions (``FSMN``, ``UNTR``) carry bitmaps indexed by entry
or by directory. An uncompressed encoding (one marker word, then every word
literally) is valid EWAH and keeps this module small; the bitmaps are at most
a few KiB even for trees of a million files.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

_WORD_BITS = 64
_LITERAL_SHIFT = 33
"""A marker word holds the run bit (bit 0), the run length (bits 1-32) and the literal-word count."""


def encode_ewah(bits: Iterable[int], bit_size: int) -> bytes:
    """Serialise the bitmap of ``bit_size`` bits with ``bits`` set, as ``ewah_serialize`` does."""
    words = [0] * ((bit_size + _WORD_BITS - 1) // _WORD_BITS)
    for bit in bits:
        if not 0 <= bit < bit_size:
            raise ValueError(f"bit {bit} outside a bitmap of {bit_size} bits")
        words[bit // _WORD_BITS] |= 1 << (bit % _WORD_BITS)
    buffer = [len(words) << _LITERAL_SHIFT, *words]
    return (
        struct.pack(">II", bit_size, len(buffer))
        + struct.pack(f">{len(buffer)}Q", *buffer)
        + struct.pack(">I", 0)
    )  # position of the last marker word: the first


def encode_varint(value: int) -> bytes:
    """git's ``encode_varint``: big-endian groups of 7 bits, each continuation offset by one."""
    if value < 0:
        raise ValueError("varints are unsigned")
    groups = [value & 0x7F]
    value >>= 7
    while value:
        value -= 1
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))
