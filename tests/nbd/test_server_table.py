"""One table drives the parser: (starting state, bytes in, events out, bytes
the machine answers alone, state after). Each row is fed whole and byte by
byte, and every event must be a legal trigger of the state it came from."""

from __future__ import annotations

import struct

import pytest

from tests.nbd import client_bytes as cb
from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import RemoteProtocolError
from vdfarm.nbd.events import (
    BadRequest,
    Disconnect,
    ExportRequest,
    ListRequest,
    Request,
    StartTLS,
)
from vdfarm.nbd.server import NEED_DATA, ServerConnection
from vdfarm.nbd.states import State, can

ALL = (
    c.FLAG_SEND_FLUSH
    | c.FLAG_SEND_FUA
    | c.FLAG_SEND_TRIM
    | c.FLAG_SEND_WRITE_ZEROES
    | c.FLAG_SEND_CACHE
    | c.FLAG_SEND_DF
)


def rep(opt: int, rtype: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", 0x3E889045565A9, opt, rtype, len(data)) + data


def err(opt: int, rtype: int, message: str) -> bytes:
    return rep(opt, rtype, message.encode())


def greeted() -> ServerConnection:
    conn = ServerConnection()
    conn.start()
    return conn


SETUPS = {
    "CLIENT_FLAGS": greeted,
    "OPTIONS": cb.started,
    "TRANSMISSION": lambda: cb.in_transmission(ALL, structured=True, meta=True),
    "TRANSMISSION-RO": lambda: cb.in_transmission(c.FLAG_READ_ONLY),
    "OPTIONS-TLS-OPTIONAL": lambda: cb.started(tls="optional"),
    "OPTIONS-TLS-REQUIRE": lambda: cb.started(tls="require"),
}

RP = RemoteProtocolError
o, rq = cb.option, cb.request

TABLE = [
    # (setup, input, events (or an exception class), bytes answered alone, state after)
    ("CLIENT_FLAGS", cb.client_flags(), [], b"", State.OPTIONS),
    ("CLIENT_FLAGS", cb.client_flags(3) + o(c.OPT_LIST), [ListRequest()], b"", State.LIST_ANSWER),
    ("CLIENT_FLAGS", cb.client_flags(7), RP, b"", State.ERROR),
    ("CLIENT_FLAGS", cb.client_flags(2), RP, b"", State.ERROR),
    ("OPTIONS", o(c.OPT_STRUCTURED_REPLY), [], rep(8, c.REP_ACK), State.OPTIONS),
    (
        "OPTIONS",
        o(c.OPT_STRUCTURED_REPLY, b"x"),
        [],
        err(8, c.REP_ERR_INVALID, "option takes no data"),
        State.OPTIONS,
    ),
    (
        "OPTIONS",
        o(c.OPT_STARTTLS),
        [],
        err(5, c.REP_ERR_POLICY, "TLS not available"),
        State.OPTIONS,
    ),
    (
        "OPTIONS",
        o(c.OPT_EXTENDED_HEADERS),
        [],
        err(11, c.REP_ERR_UNSUP, "option 11 not supported"),
        State.OPTIONS,
    ),
    (
        "OPTIONS",
        o(c.OPT_PEEK_EXPORT),
        [],
        err(4, c.REP_ERR_UNSUP, "option 4 not supported"),
        State.OPTIONS,
    ),
    ("OPTIONS", o(c.OPT_ABORT), [Disconnect()], rep(2, c.REP_ACK), State.CLOSED),
    ("OPTIONS", o(c.OPT_LIST), [ListRequest()], b"", State.LIST_ANSWER),
    (
        "OPTIONS",
        o(c.OPT_LIST, b"x"),
        [],
        err(3, c.REP_ERR_INVALID, "NBD_OPT_LIST takes no data"),
        State.OPTIONS,
    ),
    (
        "OPTIONS",
        o(c.OPT_INFO, cb.go_data("a", (3,))),
        [ExportRequest("a", False, False, (3,))],
        b"",
        State.EXPORT_ANSWER,
    ),
    (
        "OPTIONS",
        o(c.OPT_GO, cb.go_data("")),
        [ExportRequest("", True, False, ())],
        b"",
        State.EXPORT_ANSWER,
    ),
    (
        "OPTIONS",
        o(c.OPT_GO, b"\0\0\0\x09disk\0\0"),
        [],
        err(7, c.REP_ERR_INVALID, "export name longer than the option"),
        State.OPTIONS,
    ),
    (
        "OPTIONS",
        o(c.OPT_EXPORT_NAME, b"d"),
        [ExportRequest("d", True, True, ())],
        b"",
        State.EXPORT_ANSWER,
    ),
    (
        "OPTIONS",
        o(c.OPT_LIST_META_CONTEXT, cb.meta_data("d")),
        [],
        rep(9, c.REP_META_CONTEXT, b"\0\0\0\0base:allocation") + rep(9, c.REP_ACK),
        State.OPTIONS,
    ),
    (
        "OPTIONS",
        o(c.OPT_SET_META_CONTEXT, cb.meta_data("d")),
        [],
        err(10, c.REP_ERR_INVALID, "negotiate structured replies first"),
        State.OPTIONS,
    ),
    (
        "OPTIONS",
        o(c.OPT_STRUCTURED_REPLY)
        + o(c.OPT_SET_META_CONTEXT, cb.meta_data("d", ("base:allocation",))),
        [],
        rep(8, c.REP_ACK)
        + rep(10, c.REP_META_CONTEXT, b"\0\0\0\x01base:allocation")
        + rep(10, c.REP_ACK),
        State.OPTIONS,
    ),
    (
        "OPTIONS",
        o(c.OPT_STARTTLS) + o(c.OPT_GO, cb.go_data("x")),
        [ExportRequest("x", True, False, ())],
        err(5, c.REP_ERR_POLICY, "TLS not available"),
        State.EXPORT_ANSWER,
    ),
    (
        "OPTIONS-TLS-OPTIONAL",
        o(c.OPT_STARTTLS),
        [StartTLS()],
        rep(5, c.REP_ACK),
        State.TLS_HANDSHAKE,
    ),
    (
        "OPTIONS-TLS-OPTIONAL",
        o(c.OPT_LIST),
        [ListRequest()],
        b"",
        State.LIST_ANSWER,
    ),
    (
        "OPTIONS-TLS-REQUIRE",
        o(c.OPT_STARTTLS),
        [StartTLS()],
        rep(5, c.REP_ACK),
        State.TLS_HANDSHAKE,
    ),
    (
        "OPTIONS-TLS-REQUIRE",
        o(c.OPT_LIST) + o(c.OPT_GO, cb.go_data("x")) + o(c.OPT_STRUCTURED_REPLY),
        [],
        err(3, c.REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS")
        + err(7, c.REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS")
        + err(8, c.REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS"),
        State.OPTIONS,
    ),
    (
        "OPTIONS-TLS-REQUIRE",
        o(c.OPT_STARTTLS, b"x"),
        [],
        err(5, c.REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data"),
        State.OPTIONS,
    ),
    ("OPTIONS-TLS-REQUIRE", o(c.OPT_ABORT), [Disconnect()], rep(2, c.REP_ACK), State.CLOSED),
    ("OPTIONS-TLS-REQUIRE", o(c.OPT_EXPORT_NAME, b"d"), RP, b"", State.ERROR),
    ("OPTIONS", o(c.OPT_LIST, magic=1), RP, b"", State.ERROR),
    ("OPTIONS", o(c.OPT_GO, length=c.MAX_OPTION_LENGTH + 1), RP, b"", State.ERROR),
    (
        "TRANSMISSION",
        rq(c.CMD_READ, 1, 0, 512),
        [Request(1, 0, 0, 0, 512)],
        b"",
        State.TRANSMISSION,
    ),
    (
        "TRANSMISSION",
        rq(c.CMD_WRITE, 2, 512, 3, c.CMD_FLAG_FUA, b"abc"),
        [Request(2, 1, 1, 512, 3, b"abc")],
        b"",
        State.TRANSMISSION,
    ),
    (
        "TRANSMISSION",
        rq(c.CMD_FLUSH, 3) + rq(c.CMD_TRIM, 4, 0, 9) + rq(c.CMD_CACHE, 5, 0, 9),
        [Request(3, 3, 0, 0, 0), Request(4, 4, 0, 0, 9), Request(5, 5, 0, 0, 9)],
        b"",
        State.TRANSMISSION,
    ),
    (
        "TRANSMISSION",
        rq(c.CMD_WRITE_ZEROES, 6, 0, 9, c.CMD_FLAG_NO_HOLE),
        [Request(6, 6, 2, 0, 9)],
        b"",
        State.TRANSMISSION,
    ),
    (
        "TRANSMISSION",
        rq(c.CMD_BLOCK_STATUS, 7, 0, 9, c.CMD_FLAG_REQ_ONE),
        [Request(7, 7, 8, 0, 9)],
        b"",
        State.TRANSMISSION,
    ),
    (
        "TRANSMISSION",
        rq(c.CMD_WRITE_ZEROES, 8, 0, 9, c.CMD_FLAG_FAST_ZERO),
        [BadRequest(8, c.NBD_EINVAL, "command flags 0x10 not allowed on WRITE_ZEROES")],
        b"",
        State.TRANSMISSION,
    ),
    (
        "TRANSMISSION",
        rq(42, 9),
        [BadRequest(9, c.NBD_EINVAL, "unknown command 42")],
        b"",
        State.TRANSMISSION,
    ),
    ("TRANSMISSION", rq(c.CMD_DISC, 10) + b"ignored", [Disconnect()], b"", State.CLOSED),
    ("TRANSMISSION", rq(c.CMD_READ, 1, 0, 1, magic=c.SIMPLE_REPLY_MAGIC), RP, b"", State.ERROR),
    (
        "TRANSMISSION-RO",
        rq(c.CMD_WRITE, 11, 0, 2, 0, b"xy") + rq(c.CMD_READ, 12, 0, 2),
        [BadRequest(11, c.NBD_EPERM, "WRITE on a read-only export"), Request(12, 0, 0, 0, 2)],
        b"",
        State.TRANSMISSION,
    ),
]


def run(conn: ServerConnection, chunks) -> tuple[list, bytes]:
    """Feed the chunks, collecting events (checked against the state table)
    and the bytes answered alone, until an application answer is owed."""
    seen, out = [], b""
    for chunk in chunks:
        conn.receive_data(chunk)
        while conn.state in (State.CLIENT_FLAGS, State.OPTIONS, State.TRANSMISSION):
            before = conn.state
            ev = conn.next_event()
            out += conn.data_to_send()
            if ev is NEED_DATA:
                break
            if before is State.CLIENT_FLAGS:  # flags and options read in one call:
                before = State.OPTIONS  # the event comes from OPTIONS
            assert can(before, type(ev)), f"{type(ev).__name__} emitted in {before}"
            seen.append(ev)
    return seen, out


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
@pytest.mark.parametrize("setup, raw, expected, answered, after", TABLE)
def test_parser_table(feed, setup, raw, expected, answered, after):
    conn = SETUPS[setup]()
    chunks = [raw] if feed == "whole" else [raw[i : i + 1] for i in range(len(raw))]
    if isinstance(expected, type):
        with pytest.raises(expected):
            run(conn, chunks)
    else:
        events, out = run(conn, chunks)
        assert events == expected
        assert out == answered
    assert conn.state is after
