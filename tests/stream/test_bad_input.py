"""Bad input against the real server: each gets its expected answer, the
server keeps serving others, and nothing changes on disk."""

from __future__ import annotations

import struct

import pytest

from tests.conftest import sha256
from tests.stream import rawclient as rc
from tests.stream.conftest import run, store_file

SIZE = 64 << 20  # the test image


@pytest.fixture
def guarded(served):
    """The served farm; after the test, the vDisk files are unchanged and the
    server still answers a real client."""
    files = [store_file(served, "golden"), store_file(served, "mine")]
    before = [sha256(f) for f in files]
    yield served
    assert [sha256(f) for f in files] == before, "bad input changed a vDisk file"
    assert served.server.poll() is None, "server died"
    run("qemu-img", "info", served.uri("pc1"))


def client(farm) -> rc.RawClient:
    return rc.RawClient(farm.port)


def test_bad_option_magic_closes_the_connection(guarded):
    c = client(guarded)
    c.greeting()
    c.send_client_flags()
    c.send_option(rc.OPT_GO, b"\0" * 6, magic=0x1234)
    assert c.is_closed_by_server()


def test_unknown_client_flags_close_the_connection(guarded):
    c = client(guarded)
    c.greeting()
    c.send_client_flags(0x3 | 0x80)
    assert c.is_closed_by_server()


def test_huge_option_length_closes_without_buffering(guarded):
    c = client(guarded)
    c.greeting()
    c.send_client_flags()
    c.send_option(rc.OPT_GO, b"", length=0x7FFFFFFF)
    assert c.is_closed_by_server()


@pytest.mark.parametrize("option", [99, rc.OPT_EXTENDED_HEADERS, 4, 0x7FFF])
def test_unknown_options_get_unsup_and_the_handshake_goes_on(guarded, option):
    c = client(guarded)
    c.greeting()
    c.send_client_flags()
    c.send_option(option, b"xyz")
    opt, rtype, _ = c.option_reply()
    assert (opt, rtype) == (option, rc.REP_ERR_UNSUP)
    size, _ = c.go("pc1")
    assert size == SIZE


def test_starttls_is_refused_by_policy(guarded):
    c = client(guarded)
    c.greeting()
    c.send_client_flags()
    c.send_option(rc.OPT_STARTTLS)
    assert c.option_reply()[1] == rc.REP_ERR_POLICY
    assert c.go("pc1")[0] == SIZE


def test_unknown_export_gets_err_unknown_with_a_message(guarded):
    c = client(guarded)
    c.greeting()
    c.send_client_flags()
    with pytest.raises(rc.NBDOptionError) as err:
        c.go("no-such-device")
    assert err.value.rtype == rc.REP_ERR_UNKNOWN
    assert "no-such-device" in err.value.message
    assert c.go("pc1")[0] == SIZE  # the handshake goes on


@pytest.mark.parametrize("export", ["pc1", "solo"])
@pytest.mark.parametrize(
    "cmd,offset,length,expected",
    [
        (rc.CMD_READ, SIZE - 4096, 8192, rc.EINVAL),
        (rc.CMD_READ, SIZE, 1, rc.EINVAL),
        (rc.CMD_WRITE, SIZE - 512, 1024, rc.ENOSPC),
        (rc.CMD_TRIM, SIZE, 4096, rc.EINVAL),
        (rc.CMD_WRITE_ZEROES, SIZE - 1, 2, rc.ENOSPC),
        (rc.CMD_READ, 2**64 - 512, 1024, None),  # offset+length overflows 64 bits
        (rc.CMD_READ, 0, 0, rc.EINVAL),
        (rc.CMD_WRITE, 0, 0, rc.EINVAL),
        (rc.CMD_READ, 0, (32 << 20) + 1, None),  # too big: EINVAL or EOVERFLOW
    ],
)
def test_out_of_range_requests(guarded, export, cmd, offset, length, expected):
    c = client(guarded)
    c.connect(export)
    data = b"\xee" * length if cmd == rc.CMD_WRITE else b""
    error, _ = c.call(cmd, offset, length, data=data)
    if expected is None:
        assert error in (rc.EINVAL, rc.EOVERFLOW)
    else:
        assert error == expected
    assert c.call(rc.CMD_READ, 0, 4096)[0] == 0  # the connection still works


def test_oversized_write_is_refused_and_its_payload_skipped(guarded):
    c = client(guarded)
    c.connect("solo")
    length = (32 << 20) + 4096
    error, _ = c.call(rc.CMD_WRITE, 0, length, data=b"\xee" * length)
    assert error in (rc.EINVAL, rc.EOVERFLOW)
    assert c.call(rc.CMD_READ, 0, 4096)[0] == 0


def test_write_to_a_read_only_export_is_eperm(guarded):
    c = client(guarded)
    _, flags = c.connect("vdisk/golden")
    assert flags & 2, "read-only flag must be advertised"
    assert c.call(rc.CMD_WRITE, 0, 4096, data=b"\xee" * 4096)[0] == rc.EPERM
    assert c.call(rc.CMD_WRITE_ZEROES, 0, 4096)[0] in (rc.EPERM, rc.EINVAL)
    assert c.call(rc.CMD_TRIM, 0, 4096)[0] in (rc.EPERM, rc.EINVAL)
    assert c.call(rc.CMD_READ, 0, 4096)[0] == 0


@pytest.mark.parametrize(
    "cmd,flags",
    [
        (99, 0),  # no such command
        (8, 0),  # NBD_CMD_RESIZE: never advertised
        (rc.CMD_READ, 0x8000),  # unknown flag bit
        (rc.CMD_READ, 1 << 1),  # NO_HOLE is for WRITE_ZEROES only
        (rc.CMD_TRIM, 1 << 4),  # FAST_ZERO is for WRITE_ZEROES only
    ],
)
def test_unknown_commands_and_flags_are_einval(guarded, cmd, flags):
    c = client(guarded)
    c.connect("solo")
    assert c.call(cmd, 0, 4096, flags=flags)[0] == rc.EINVAL
    assert c.call(rc.CMD_READ, 0, 4096)[0] == 0


def test_client_disconnecting_mid_write_changes_nothing(guarded):
    c = client(guarded)
    c.connect("solo")
    header = struct.pack(">IHHQQI", rc.REQUEST_MAGIC, 0, rc.CMD_WRITE, 1, 0, 65536)
    c.sock.sendall(header + b"\xee" * 1000)  # then vanish
    c.close()


def test_client_disconnecting_mid_header_changes_nothing(guarded):
    c = client(guarded)
    c.connect("solo")
    c.sock.sendall(struct.pack(">IHH", rc.REQUEST_MAGIC, 0, rc.CMD_WRITE))
    c.close()


def test_bad_request_magic_closes_the_connection(guarded):
    c = client(guarded)
    c.connect("pc1")
    c.sock.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, rc.CMD_READ, 1, 0, 512))
    assert c.is_closed_by_server()


def test_structured_reply_errors_carry_a_message(guarded):
    c = client(guarded)
    c.connect("pc1", structured=True)
    c.request(rc.CMD_READ, SIZE, 512)
    magic, flags, rtype, cookie, length = struct.unpack(">IHHQI", c.recv_exact(20))
    assert magic == rc.STRUCTURED_MAGIC
    assert rtype == (1 << 15) + 1 and flags & 1  # NBD_REPLY_TYPE_ERROR, DONE
    payload = c.recv_exact(length)
    error, msg_len = struct.unpack(">IH", payload[:6])
    assert error == rc.EINVAL and msg_len > 0
