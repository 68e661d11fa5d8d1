"""pkt-line framing, incremental decoding, side-band and ERR packets."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from artifactfs.errors import MissingObjectError, ProtocolError, RemoteError
from artifactfs.remote import pktline
from artifactfs.remote.pktline import (
    DELIM,
    FLUSH,
    RESPONSE_END,
    Packet,
    PacketKind,
    PktLineDecoder,
)


def data(payload: bytes) -> Packet:
    return Packet(PacketKind.DATA, payload)


def test_encode_frames_length_including_prefix() -> None:
    assert pktline.encode("command=ls-refs\n") == b"0014command=ls-refs\n"
    assert pktline.encode(b"a") == b"0005a"
    assert pktline.encode_packet(FLUSH) + pktline.encode_packet(DELIM) + pktline.encode_packet(
        RESPONSE_END
    ) == (b"000000010002")
    assert len(pktline.encode(b"x" * pktline.MAX_PAYLOAD)) == pktline.MAX_PKT_LEN


@pytest.mark.parametrize("payload", [b"", b"x" * (pktline.MAX_PAYLOAD + 1)])
def test_encode_rejects_unframeable_payloads(payload: bytes) -> None:
    with pytest.raises(ValueError):
        pktline.encode(payload)


def test_decoder_handles_any_chunking() -> None:
    packets = [
        data(b"version 2\n"),
        DELIM,
        data(random.Random(47).randbytes(pktline.MAX_PAYLOAD)),
        FLUSH,
        RESPONSE_END,
    ]
    stream = b"".join(pktline.encode_packet(p) for p in packets)
    rng = random.Random(7)
    for _ in range(20):
        decoder = PktLineDecoder()
        out: list[Packet] = []
        pos = 0
        while pos < len(stream):
            step = rng.choice([1, 2, 3, 5, 4096, 70000])
            out += decoder.feed(stream[pos : pos + step])
            pos += step
        assert out == packets
        assert decoder.pending == 0


def test_decoder_reports_pending_partial_packet() -> None:
    decoder = PktLineDecoder()
    assert decoder.feed(b"000ahel") == []
    assert decoder.pending == 7
    assert decoder.feed(b"lo\n0000") == [data(b"hello\n"), FLUSH]
    with pytest.raises(ProtocolError, match="ends inside a packet"):
        pktline.decode_all(b"0009abc")


@pytest.mark.parametrize("stream", [b"zzzz", b"0003", b"fff5" + b"x" * 10])
def test_decoder_rejects_bad_lengths(stream: bytes) -> None:
    with pytest.raises(ProtocolError):
        PktLineDecoder().feed(stream)


def test_real_upload_pack_advertisement_decodes(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "r.git")], check=True)
    advertisement = subprocess.run(
        ["git", "upload-pack", "--stateless-rpc", "--advertise-refs", str(tmp_path / "r.git")],
        env=dict(os.environ, GIT_PROTOCOL="version=2"),
        capture_output=True,
        check=True,
    ).stdout
    packets = pktline.decode_all(advertisement)
    assert packets[0].text() == "version 2"
    assert packets[-1] == FLUSH
    assert any(p.text().startswith("fetch") for p in packets[1:-1])


def test_sideband_bands() -> None:
    assert pktline.split_sideband(b"\x01PACK") == (1, b"PACK")
    assert pktline.split_sideband(b"\x02Counting objects\r") == (2, b"Counting objects\r")
    with pytest.raises(RemoteError, match="remote error: fatal: out of memory") as info:
        pktline.split_sideband(b"\x03fatal: out of memory\nmore\n")
    assert "\n" not in str(info.value)
    with pytest.raises(ProtocolError, match="channel 4"):
        pktline.split_sideband(b"\x04x")
    with pytest.raises(ProtocolError):
        pktline.split_sideband(b"")


def test_err_packets_map_to_errors() -> None:
    oid = "3b18e512dba79e4c8300dd08aeb37f8e728b8dad"
    with pytest.raises(MissingObjectError) as info:
        pktline.raise_for_error_packet(f"ERR upload-pack: not our ref {oid}\n".encode())
    assert info.value.oid == oid
    assert oid in str(info.value)
    with pytest.raises(RemoteError, match="remote error: access denied") as other:
        pktline.raise_for_error_packet(b"ERR access denied")
    assert not isinstance(other.value, MissingObjectError)
    pktline.raise_for_error_packet(b"ERRATA is not an error packet")


def test_not_our_ref_is_a_missing_object_whether_or_not_it_names_one() -> None:
    oid = "3b18e512dba79e4c8300dd08aeb37f8e728b8dad"
    with pytest.raises(MissingObjectError) as unnamed:
        pktline.raise_for_error_packet(b"ERR upload-pack: not our ref")
    assert unnamed.value.oid is None
    with pytest.raises(MissingObjectError) as fatal:
        pktline.split_sideband(b"\x03fatal: git upload-pack: not our ref " + oid.encode() + b"\n")
    assert fatal.value.oid == oid
