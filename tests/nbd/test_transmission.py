"""Transmission phase (vdfarm.nbd.transmission): requests in, replies out."""

from __future__ import annotations

import pytest

from tests.nbd import client_bytes as cb
from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import LocalProtocolError, RemoteProtocolError
from vdfarm.nbd.events import BadRequest, Disconnect, Request
from vdfarm.nbd.server import NEED_DATA
from vdfarm.nbd.states import State

ALL_FLAGS = (
    c.FLAG_SEND_FLUSH
    | c.FLAG_SEND_FUA
    | c.FLAG_SEND_TRIM
    | c.FLAG_SEND_WRITE_ZEROES
    | c.FLAG_SEND_FAST_ZERO
    | c.FLAG_SEND_CACHE
    | c.FLAG_SEND_DF
)


def one_event(conn, raw: bytes):
    conn.receive_data(raw)
    ev = conn.next_event()
    assert conn.next_event() is NEED_DATA or conn.state is State.CLOSED
    return ev


# -- valid requests ------------------------------------------------------------------


def test_read_request():
    conn = cb.in_transmission()
    ev = one_event(conn, cb.request(c.CMD_READ, cookie=0xDEADBEEFCAFE, offset=4096, length=512))
    assert ev == Request(0xDEADBEEFCAFE, c.CMD_READ, 0, 4096, 512, None)


@pytest.mark.parametrize(
    "cmd, flags, length",
    [
        (c.CMD_READ, c.CMD_FLAG_FUA | c.CMD_FLAG_DF, 512),
        (c.CMD_FLUSH, c.CMD_FLAG_FUA, 0),
        (c.CMD_TRIM, c.CMD_FLAG_FUA, 512),
        (c.CMD_CACHE, 0, 512),
        (c.CMD_WRITE_ZEROES, c.CMD_FLAG_FUA | c.CMD_FLAG_NO_HOLE | c.CMD_FLAG_FAST_ZERO, 1 << 31),
        (c.CMD_BLOCK_STATUS, c.CMD_FLAG_REQ_ONE, 1 << 31),
    ],
)
def test_every_advertised_command_passes(cmd, flags, length):
    conn = cb.in_transmission(ALL_FLAGS, structured=True, meta=True)
    offset = 0 if cmd == c.CMD_FLUSH else 8192
    ev = one_event(conn, cb.request(cmd, 5, offset, length, flags))
    assert ev == Request(5, cmd, flags, offset, length, None)


def test_write_whole_in_one_buffer():
    conn = cb.in_transmission(c.FLAG_SEND_FUA)
    payload = bytes(range(256)) * 4
    ev = one_event(conn, cb.request(c.CMD_WRITE, 9, 512, len(payload), c.CMD_FLAG_FUA, payload))
    assert ev == Request(9, c.CMD_WRITE, c.CMD_FLAG_FUA, 512, len(payload), payload)
    assert bytes(ev.data) == payload


def test_write_byte_by_byte_gives_one_event_after_the_payload():
    conn = cb.in_transmission()
    payload = b"0123456789abcdef" * 8
    raw = cb.request(c.CMD_WRITE, 3, 0, len(payload), data=payload) + cb.request(c.CMD_FLUSH, 4)
    seen = []
    for byte in raw:
        conn.receive_data(bytes([byte]))
        while (ev := conn.next_event()) is not NEED_DATA:
            seen.append(ev)
    assert seen == [
        Request(3, c.CMD_WRITE, 0, 0, len(payload), payload),
        BadRequest(4, c.NBD_EINVAL, "FLUSH was not advertised by the server"),
    ]


def test_large_write_streamed_in_chunks():
    conn = cb.in_transmission()
    payload = bytes((i * 7) % 251 for i in range(1 << 20))
    raw = cb.request(c.CMD_WRITE, 1, 0, len(payload), data=payload) + cb.request(
        c.CMD_READ, 2, 0, 1
    )
    events = []
    for i in range(0, len(raw), 65536 - 3):  # chunks that straddle the header and payload
        conn.receive_data(raw[i : i + 65536 - 3])
        while (ev := conn.next_event()) is not NEED_DATA:
            events.append(ev)
    assert [e.cookie for e in events] == [1, 2]
    assert bytes(events[0].data) == payload


def test_pipelined_requests_come_out_in_order():
    conn = cb.in_transmission(c.FLAG_SEND_FLUSH)
    raw = b"".join(
        [
            cb.request(c.CMD_READ, 1, 0, 512),
            cb.request(c.CMD_WRITE, 2, 0, 3, data=b"abc"),
            cb.request(c.CMD_FLUSH, 3),
            cb.request(c.CMD_READ, 4, 512, 512),
        ]
    )
    assert cb.events(conn) == []
    conn.receive_data(raw)
    got = [conn.next_event() for _ in range(4)]
    assert [(e.cookie, e.command) for e in got] == [(1, 0), (2, 1), (3, 3), (4, 0)]
    assert conn.next_event() is NEED_DATA


# -- bad requests: every rule with its exact answer --------------------------------------

EINVAL, EPERM, EOVERFLOW = c.NBD_EINVAL, c.NBD_EPERM, c.NBD_EOVERFLOW
F = c  # short alias for the table

BAD = [
    # (id, export flags, structured+meta, cmd, flags, offset, length, error, message part)
    ("unknown command", 0, False, 9, 0, 0, 512, EINVAL, "unknown command 9"),
    ("RESIZE unknown to us", 0, False, c.CMD_RESIZE, 0, 0, 512, EINVAL, "unknown command 8"),
    ("huge command", 0, False, 0xFFFF, 0, 0, 0, EINVAL, "unknown command"),
    (
        "FUA without SEND_FUA",
        0,
        False,
        c.CMD_READ,
        F.CMD_FLAG_FUA,
        0,
        512,
        EINVAL,
        "0x1 not allowed on READ",
    ),
    (
        "NO_HOLE on WRITE",
        0,
        False,
        c.CMD_WRITE,
        F.CMD_FLAG_NO_HOLE,
        0,
        4,
        EINVAL,
        "0x2 not allowed on WRITE",
    ),
    (
        "DF without structured",
        c.FLAG_SEND_DF,
        False,
        c.CMD_READ,
        F.CMD_FLAG_DF,
        0,
        512,
        EINVAL,
        "0x4",
    ),
    ("DF without SEND_DF", 0, True, c.CMD_READ, F.CMD_FLAG_DF, 0, 512, EINVAL, "0x4"),
    (
        "DF on WRITE",
        ALL_FLAGS,
        True,
        c.CMD_WRITE,
        F.CMD_FLAG_DF,
        0,
        4,
        EINVAL,
        "0x4 not allowed on WRITE",
    ),
    ("REQ_ONE on READ", ALL_FLAGS, True, c.CMD_READ, F.CMD_FLAG_REQ_ONE, 0, 512, EINVAL, "0x8"),
    (
        "FAST_ZERO without SEND_FAST_ZERO",
        c.FLAG_SEND_WRITE_ZEROES,
        False,
        c.CMD_WRITE_ZEROES,
        F.CMD_FLAG_FAST_ZERO,
        0,
        512,
        EINVAL,
        "0x10 not allowed on WRITE_ZEROES",
    ),
    (
        "FAST_ZERO on TRIM",
        ALL_FLAGS,
        True,
        c.CMD_TRIM,
        F.CMD_FLAG_FAST_ZERO,
        0,
        512,
        EINVAL,
        "0x10",
    ),
    (
        "PAYLOAD_LEN never",
        ALL_FLAGS,
        True,
        c.CMD_READ,
        F.CMD_FLAG_PAYLOAD_LEN,
        0,
        512,
        EINVAL,
        "0x20",
    ),
    ("unknown flag bit", ALL_FLAGS, True, c.CMD_READ, 1 << 15, 0, 512, EINVAL, "0x8000"),
    ("TRIM not advertised", 0, False, c.CMD_TRIM, 0, 0, 512, EINVAL, "TRIM was not advertised"),
    ("FLUSH not advertised", 0, False, c.CMD_FLUSH, 0, 0, 0, EINVAL, "FLUSH was not advertised"),
    (
        "WRITE_ZEROES not advertised",
        0,
        False,
        c.CMD_WRITE_ZEROES,
        0,
        0,
        512,
        EINVAL,
        "not advertised",
    ),
    ("CACHE not advertised", 0, False, c.CMD_CACHE, 0, 0, 512, EINVAL, "CACHE was not advertised"),
    (
        "BLOCK_STATUS without meta",
        ALL_FLAGS,
        False,
        c.CMD_BLOCK_STATUS,
        0,
        0,
        512,
        EINVAL,
        "without a negotiated metadata context",
    ),
    ("FLUSH with offset", ALL_FLAGS, True, c.CMD_FLUSH, 0, 512, 0, EINVAL, "must be zero"),
    ("FLUSH with length", ALL_FLAGS, True, c.CMD_FLUSH, 0, 0, 512, EINVAL, "must be zero"),
    ("zero READ", ALL_FLAGS, True, c.CMD_READ, 0, 0, 0, EINVAL, "zero-length READ"),
    ("zero WRITE", ALL_FLAGS, True, c.CMD_WRITE, 0, 0, 0, EINVAL, "zero-length WRITE"),
    ("zero TRIM", ALL_FLAGS, True, c.CMD_TRIM, 0, 0, 0, EINVAL, "zero-length TRIM"),
    ("zero WRITE_ZEROES", ALL_FLAGS, True, c.CMD_WRITE_ZEROES, 0, 0, 0, EINVAL, "zero-length"),
    ("zero CACHE", ALL_FLAGS, True, c.CMD_CACHE, 0, 0, 0, EINVAL, "zero-length CACHE"),
    ("zero BLOCK_STATUS", ALL_FLAGS, True, c.CMD_BLOCK_STATUS, 0, 0, 0, EINVAL, "zero-length"),
    (
        "READ over max",
        0,
        False,
        c.CMD_READ,
        0,
        0,
        c.MAX_PAYLOAD + 1,
        EOVERFLOW,
        "exceeds the maximum",
    ),
    (
        "offset+length past 2**64",
        0,
        False,
        c.CMD_READ,
        0,
        (1 << 64) - 511,
        512,
        EINVAL,
        "overflows",
    ),
    ("TRIM past 2**64", ALL_FLAGS, True, c.CMD_TRIM, 0, (1 << 64) - 1, 2, EINVAL, "overflows"),
    (
        "TRIM on read-only",
        c.FLAG_READ_ONLY | ALL_FLAGS,
        True,
        c.CMD_TRIM,
        0,
        0,
        512,
        EPERM,
        "read-only",
    ),
    (
        "WRITE_ZEROES on read-only",
        c.FLAG_READ_ONLY,
        False,
        c.CMD_WRITE_ZEROES,
        0,
        0,
        512,
        EPERM,
        "read-only",
    ),
]


@pytest.mark.parametrize(
    "export_flags, negotiated, cmd, flags, offset, length, error, message",
    [b[1:] for b in BAD],
    ids=[b[0] for b in BAD],
)
def test_bad_request_answer_and_sync_kept(
    export_flags, negotiated, cmd, flags, offset, length, error, message
):
    conn = cb.in_transmission(export_flags, structured=negotiated, meta=negotiated)
    payload = bytes(length) if cmd == c.CMD_WRITE else b""  # a bad WRITE's payload is consumed
    conn.receive_data(
        cb.request(cmd, 77, offset, length, flags, payload) + cb.request(c.CMD_READ, 78, 0, 1)
    )
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and (ev.cookie, ev.error) == (77, error)
    assert message in ev.message
    assert conn.next_event() == Request(78, c.CMD_READ, 0, 0, 1, None)
    assert conn.state is State.TRANSMISSION


def test_edge_of_2_64_is_still_valid():
    conn = cb.in_transmission()
    ev = one_event(conn, cb.request(c.CMD_READ, 1, (1 << 64) - 512, 512))
    assert isinstance(ev, Request)


@pytest.mark.parametrize("offset, length", [(1, 512), (512, 1), (256, 512)])
def test_misaligned_requests_are_einval_when_min_block_is_set(offset, length):
    conn = cb.in_transmission(min_block=512)
    ev = one_event(conn, cb.request(c.CMD_READ, 1, offset, length))
    assert ev == BadRequest(1, c.NBD_EINVAL, "READ not aligned to the minimum block size 512")
    assert isinstance(one_event(conn, cb.request(c.CMD_READ, 2, 1024, 512)), Request)


@pytest.mark.parametrize(
    "export_flags, flags, length, error",
    [
        (c.FLAG_READ_ONLY, 0, 4096, c.NBD_EPERM),
        (0, 0, c.MAX_PAYLOAD + 1, c.NBD_EINVAL),
        (0, c.CMD_FLAG_FUA, 100, c.NBD_EINVAL),
        (0, c.CMD_FLAG_PAYLOAD_LEN, 100, c.NBD_EINVAL),
    ],
)
def test_bad_write_payload_is_consumed_then_answered(export_flags, flags, length, error):
    conn = cb.in_transmission(export_flags)
    conn.receive_data(cb.request(c.CMD_WRITE, 5, 0, length, flags))
    chunk = b"\xaa" * 65536
    left = length
    while left:
        assert conn.next_event() is NEED_DATA
        part = chunk[: min(left, len(chunk))]
        conn.receive_data(part)
        left -= len(part)
        assert len(conn._buf) <= len(chunk)  # discarded as it streams, never piled up
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and (ev.cookie, ev.error) == (5, error)
    assert isinstance(one_event(conn, cb.request(c.CMD_READ, 6, 0, 1)), Request)


def test_read_limit_follows_a_smaller_advertised_maximum():
    conn = cb.in_transmission(max_block=1 << 20)
    assert isinstance(one_event(conn, cb.request(c.CMD_READ, 1, 0, 1 << 20)), Request)
    ev = one_event(conn, cb.request(c.CMD_READ, 2, 0, (1 << 20) + 1))
    assert (ev.cookie, ev.error) == (2, c.NBD_EOVERFLOW)


def test_bad_magic_is_remote_error_and_final():
    conn = cb.in_transmission()
    conn.receive_data(cb.request(c.CMD_READ, 1, 0, 512, magic=c.EXTENDED_REQUEST_MAGIC))
    with pytest.raises(RemoteProtocolError, match="bad request magic"):
        conn.next_event()
    assert conn.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.reply_ok(1)


# -- ends of the session ----------------------------------------------------------------


def test_disc_disconnects_and_ignores_what_follows():
    conn = cb.in_transmission()
    conn.receive_data(cb.request(c.CMD_DISC, 1) + cb.request(c.CMD_READ, 2, 0, 512))
    assert conn.next_event() == Disconnect()
    assert conn.state is State.CLOSED
    assert conn.next_event() == Disconnect()
    conn.receive_data(b"junk after DISC")
    assert conn.next_event() == Disconnect()


def test_replies_to_earlier_requests_are_still_allowed_after_disc():
    conn = cb.in_transmission()
    conn.receive_data(cb.request(c.CMD_READ, 1, 0, 512) + cb.request(c.CMD_DISC, 2))
    assert conn.next_event().cookie == 1
    assert conn.next_event() == Disconnect()
    assert cb.parse_simple(conn.reply_read_header(1, 0, 512)) == (0, 1, b"")


def test_eof_between_requests_is_a_disconnect():
    conn = cb.in_transmission()
    conn.receive_data(cb.request(c.CMD_READ, 1, 0, 512))
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), Request)
    assert conn.next_event() == Disconnect(clean=False)  # no goodbye from the client
    assert conn.state is State.CLOSED
    assert conn.next_event() == Disconnect(clean=False)


@pytest.mark.parametrize(
    "raw",
    [
        cb.request(c.CMD_READ, 1, 0, 512)[:27],
        cb.request(c.CMD_READ, 1, 0, 512)[:1],
        cb.request(c.CMD_WRITE, 1, 0, 512, data=bytes(511)),
        cb.request(c.CMD_WRITE, 1, 0, 512),
        cb.request(c.CMD_WRITE, 1, 0, c.MAX_PAYLOAD + 1, data=bytes(100)),  # discarding
    ],
)
def test_eof_mid_request_is_remote_error(raw):
    conn = cb.in_transmission()
    conn.receive_data(raw)
    conn.next_event()
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="client disconnected mid-request"):
        conn.next_event()


# -- replies ------------------------------------------------------------------------------


def test_simple_replies():
    conn = cb.in_transmission()
    assert cb.parse_simple(conn.reply_ok(7)) == (0, 7, b"")
    assert cb.parse_simple(conn.reply_error(8, c.NBD_EIO, "lost")) == (c.NBD_EIO, 8, b"")
    assert cb.parse_simple(conn.reply_read_header(9, 0, 4096)) == (0, 9, b"")


def test_structured_replies():
    conn = cb.in_transmission(structured=True)
    ok = cb.parse_chunk(conn.reply_ok(7))
    assert (ok.flags, ok.type, ok.cookie, ok.payload) == (
        c.REPLY_FLAG_DONE,
        c.REPLY_TYPE_NONE,
        7,
        b"",
    )
    assert cb.parse_error_chunk(conn.reply_error(8, c.NBD_ENOSPC, "full")) == (
        8,
        c.NBD_ENOSPC,
        "full",
    )
    read = cb.parse_chunk(conn.reply_read_header(9, 1 << 40, 4096), payload_follows=4096)
    assert (read.flags, read.type, read.cookie) == (c.REPLY_FLAG_DONE, c.REPLY_TYPE_OFFSET_DATA, 9)
    assert int.from_bytes(read.payload, "big") == 1 << 40


def test_error_message_is_cut_to_an_nbd_string():
    conn = cb.in_transmission(structured=True)
    _, _, message = cb.parse_error_chunk(conn.reply_error(1, c.NBD_EIO, "é" * 3000 + "\0x"))
    assert len(message.encode()) <= 4096 and set(message) == {"é"}


@pytest.mark.parametrize("error", [0, 30, 1 << 32, -1])
def test_reply_error_needs_an_nbd_error_value(error):
    conn = cb.in_transmission(structured=True)
    with pytest.raises(LocalProtocolError):
        conn.reply_error(1, error)


@pytest.mark.parametrize("length", [0, (1 << 32) - 8])
def test_structured_read_header_needs_a_carriable_length(length):
    conn = cb.in_transmission(structured=True)
    with pytest.raises(LocalProtocolError):
        conn.reply_read_header(1, 0, length)


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize(
    "call",
    [
        lambda conn: conn.reply_ok(-1),
        lambda conn: conn.reply_ok(1 << 64),
        lambda conn: conn.reply_error(1 << 64, c.NBD_EIO),
        lambda conn: conn.reply_read_header(-1, 0, 512),
    ],
)
def test_replies_with_out_of_range_fields_are_local_errors(structured, call):
    with pytest.raises(LocalProtocolError):
        call(cb.in_transmission(structured=structured))


def test_structured_read_header_with_an_offset_past_64_bits_is_local_error():
    with pytest.raises(LocalProtocolError):
        cb.in_transmission(structured=True).reply_read_header(1, 1 << 64, 512)


def block_status(conn, cookie, length, flags=0):
    ev = one_event(conn, cb.request(c.CMD_BLOCK_STATUS, cookie, 0, length, flags))
    assert isinstance(ev, Request)


@pytest.mark.parametrize(
    "length, flags, extents, expected",
    [
        (1 << 20, 0, [(4096, c.STATE_HOLE), (8192, 0)], [(4096, c.STATE_HOLE), (8192, 0)]),
        # stop once the request is covered; the last one may go past it
        (8192, 0, [(4096, 0), (8192, 3), (4096, 0)], [(4096, 0), (8192, 3)]),
        # REQ_ONE: one extent, no longer than the request
        (4096, c.CMD_FLAG_REQ_ONE, [(1 << 20, 3), (4096, 0)], [(4096, 3)]),
        (1 << 20, c.CMD_FLAG_REQ_ONE, [(4096, 1), (4096, 0)], [(4096, 1)]),
        # over 4 GiB: clamped (aligned) and the list ends there
        ((1 << 32) - 1, 0, [(1 << 33, 3), (512, 0)], [((1 << 32) - (1 << 16), 3)]),
    ],
)
def test_block_status_reply(length, flags, extents, expected):
    conn = cb.in_transmission(structured=True, meta=True)
    block_status(conn, 11, length, flags)
    cookie, ctx, descs = cb.parse_block_status(conn.reply_block_status(11, extents))
    assert (cookie, ctx) == (11, c.META_CONTEXT_BASE_ALLOCATION_ID)
    assert descs == expected


def test_block_status_reply_is_capped_at_2_20_descriptors():
    conn = cb.in_transmission(structured=True, meta=True)
    block_status(conn, 1, (1 << 32) - 1)
    chunk = cb.parse_chunk(conn.reply_block_status(1, [(1, 0)] * ((1 << 20) + 5)))
    assert len(chunk.payload) == 4 + 8 * (1 << 20)


@pytest.mark.parametrize("extents", [[], [(0, 0)], [(-1, 0)], [(512, 1 << 32)], [(512, -1)]])
def test_block_status_reply_with_bad_extents_is_local_error(extents):
    conn = cb.in_transmission(structured=True, meta=True)
    block_status(conn, 1, 4096)
    with pytest.raises(LocalProtocolError):
        conn.reply_block_status(1, extents)
    assert cb.parse_block_status(conn.reply_block_status(1, [(4096, 0)]))[2] == [(4096, 0)]


def test_block_status_reply_needs_a_pending_request():
    conn = cb.in_transmission(structured=True, meta=True)
    with pytest.raises(LocalProtocolError):
        conn.reply_block_status(1, [(512, 0)])
    block_status(conn, 1, 4096)
    conn.reply_block_status(1, [(512, 0)])
    with pytest.raises(LocalProtocolError):  # answered already
        conn.reply_block_status(1, [(512, 0)])
    block_status(conn, 2, 4096)
    conn.reply_error(2, c.NBD_EIO)
    with pytest.raises(LocalProtocolError):  # answered with an error
        conn.reply_block_status(2, [(512, 0)])


def test_replies_before_transmission_are_local_errors():
    conn = cb.started()
    for call in (
        lambda: conn.reply_ok(1),
        lambda: conn.reply_error(1, c.NBD_EIO),
        lambda: conn.reply_read_header(1, 0, 1),
        lambda: conn.reply_block_status(1, []),
    ):
        with pytest.raises(LocalProtocolError):
            call()
    assert conn.state is State.OPTIONS
