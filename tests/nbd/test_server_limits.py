"""Limits the server machine enforces itself, and the counters that let the
I/O layer enforce its own: options per handshake, bytes per option, bytes
held before transmission, WRITE payloads held as they arrive,
`buffered_bytes` and `requests_in_flight`."""

from __future__ import annotations

import tracemalloc

import pytest

from tests.nbd import client_bytes as cb
from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import LocalProtocolError, RemoteProtocolError
from vdfarm.nbd.events import BadRequest, ExportRequest, ListRequest, Request
from vdfarm.nbd.server import NEED_DATA, ExportInfo, ServerConnection
from vdfarm.nbd.states import State

o = cb.option
INFO = ExportInfo(size=1 << 40, transmission_flags=c.FLAG_SEND_FLUSH)
MIB = 1 << 20


# -- constructor ---------------------------------------------------------------------


def test_defaults():
    conn = ServerConnection()
    assert conn.max_payload == c.MAX_PAYLOAD == 32 * MIB
    assert (c.MAX_OPTIONS, c.MAX_OPTION_LENGTH, c.MAX_HANDSHAKE_BUFFER) == (
        64,
        64 * 1024,
        256 * 1024,
    )
    assert conn.buffered_bytes == 0 and conn.requests_in_flight == 0


@pytest.mark.parametrize(
    "limits",
    [
        {"max_options": 0},
        {"max_option_length": -1},
        {"max_option_length": 1 << 32},
        {"max_option_length": 4096, "max_handshake_buffer": 4096},  # no room for one option
    ],
)
def test_impossible_limits_are_value_errors(limits):
    with pytest.raises(ValueError):
        ServerConnection(**limits)


# -- options per handshake -----------------------------------------------------------


def test_a_thousand_option_lists_stop_at_the_cap():
    """Issue 9, hole 6: 1,000 OPT_LIST (each answered with the export list)."""
    conn = cb.started()
    conn.receive_data(o(c.OPT_LIST) * 1000)
    answered = 0
    with pytest.raises(RemoteProtocolError, match="more than 64 options"):
        while True:
            assert conn.next_event() == ListRequest()
            conn.send_export_list([("disk", "")])
            answered += 1
    assert answered == c.MAX_OPTIONS
    assert conn.state is State.ERROR and conn.buffered_bytes == 0


@pytest.mark.parametrize("cap", [1, 5])
def test_options_answered_alone_count_too(cap):
    conn = cb.started(max_options=cap)
    conn.receive_data(o(999) * cap)
    assert conn.next_event() is NEED_DATA
    assert len(cb.parse_option_replies(conn.data_to_send())) == cap
    conn.receive_data(o(c.OPT_GO, cb.go_data("disk")))  # even a good one, past the cap
    with pytest.raises(RemoteProtocolError, match=f"more than {cap} options"):
        conn.next_event()


def test_the_last_allowed_option_can_enter_transmission():
    conn = cb.started(max_options=2)
    conn.receive_data(o(c.OPT_STRUCTURED_REPLY) + o(c.OPT_GO, cb.go_data("disk")))
    assert isinstance(conn.next_event(), ExportRequest)
    conn.accept_export(INFO)
    assert conn.state is State.TRANSMISSION


# -- bytes per option ----------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 100, c.MAX_OPTION_LENGTH])
def test_option_length_cap(limit):
    conn = cb.started(max_option_length=limit)
    conn.receive_data(o(999, bytes(limit)))
    assert conn.next_event() is NEED_DATA
    conn.receive_data(o(999, length=limit + 1))  # the header alone is refused
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        conn.next_event()


def test_huge_announced_option_is_refused_before_its_data_is_held():
    conn = cb.started()
    conn.receive_data(o(c.OPT_GO, length=0xFFFFFFFF))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.buffered_bytes == 0


# -- bytes held before transmission ---------------------------------------------------


def test_bytes_piling_up_while_the_application_answers_break_the_limit():
    conn = cb.started(max_handshake_buffer=c.MAX_OPTION_LENGTH + 16)
    conn.receive_data(o(c.OPT_GO, cb.go_data("disk")))
    assert isinstance(conn.next_event(), ExportRequest)  # the application is busy now
    conn.receive_data(bytes(c.MAX_OPTION_LENGTH))
    assert conn.state is State.EXPORT_ANSWER and conn.buffered_bytes == c.MAX_OPTION_LENGTH
    conn.receive_data(bytes(17))
    assert conn.state is State.ERROR and conn.buffered_bytes == 0  # nothing held any more
    conn.receive_data(bytes(MIB))  # and nothing taken in
    assert conn.buffered_bytes == 0
    with pytest.raises(RemoteProtocolError, match="handshake has not read"):
        conn.accept_export(INFO)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize("answer", ["list", "reject"])
def test_every_answer_reports_a_connection_that_failed_meanwhile(answer):
    conn = cb.started()
    raw = o(c.OPT_LIST) if answer == "list" else o(c.OPT_GO, cb.go_data("disk"))
    conn.receive_data(raw)
    conn.next_event()
    conn.receive_data(bytes(c.MAX_HANDSHAKE_BUFFER + 1))
    with pytest.raises(RemoteProtocolError):
        if answer == "list":
            conn.send_export_list([])
        else:
            conn.reject_export()


def test_junk_in_one_read_over_the_limit_fails_in_options():
    conn = cb.started()
    conn.receive_data(bytes(c.MAX_HANDSHAKE_BUFFER + 1))
    assert conn.state is State.ERROR and conn.buffered_bytes == 0
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_buffered_bytes_counts_what_is_not_parsed_yet():
    conn = cb.started()
    raw = o(c.OPT_LIST) + o(c.OPT_GO, cb.go_data("disk"))
    conn.receive_data(raw)
    assert conn.buffered_bytes == len(raw)
    conn.next_event()
    assert conn.buffered_bytes == len(raw) - 16


def test_no_handshake_limit_in_transmission():
    conn = cb.in_transmission()
    conn.receive_data(cb.request(c.CMD_READ, 1, 0, 512) * 20000)  # 560 KB of requests
    assert conn.state is State.TRANSMISSION and conn.buffered_bytes == 28 * 20000


# -- WRITE payloads held as they arrive ----------------------------------------------


def held_by(make_and_feed) -> int:
    """Bytes of Python memory still allocated after make_and_feed() (its
    result kept alive), measured with tracemalloc."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make_and_feed()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept is not None
    return after - before


def test_ten_stalled_32_mib_write_headers_hold_almost_nothing():
    """Issue 9, hole 6: WRITE buffers allocated at the header (10 stalled
    headers of 32 MiB: +122 MB)."""
    conns = [cb.in_transmission() for _ in range(10)]

    def feed():
        for conn in conns:
            for cookie in range(10):  # the first is a write; the rest count as its payload
                conn.receive_data(cb.request(c.CMD_WRITE, cookie, 0, 32 * MIB))
                assert conn.next_event() is NEED_DATA
        return conns

    assert held_by(feed) < MIB
    assert all(conn.buffered_bytes == 9 * 28 for conn in conns)


def test_a_stalled_write_holds_what_it_received():
    conn = cb.in_transmission()

    def feed():
        conn.receive_data(cb.request(c.CMD_WRITE, 1, 0, 32 * MIB) + bytes(100))
        for _ in range(4):
            conn.receive_data(bytes(256 * 1024))
        assert conn.next_event() is NEED_DATA
        return conn

    held = held_by(feed)
    assert conn.buffered_bytes == 100 + 4 * 256 * 1024
    # about 1 MiB received: held once in the receive buffer (whose capacity
    # stays) and once as the payload's piece; the announced 32 MiB never
    assert held < 3 * MIB


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize("pieces", [[28, 65536], [100, 5000, 60464], [1] * 200 + [65364], [65564]])
def test_write_payload_in_pieces_is_exact(kind, pieces):
    """Pieces of every size, passed as bytes (kept by reference), or as a
    bytearray / memoryview the caller reuses (copied)."""
    payload = bytes(range(256)) * 256
    raw = cb.request(c.CMD_WRITE, 5, 4096, len(payload), data=payload)
    assert sum(pieces) == len(raw)
    conn = cb.in_transmission()
    pos, events = 0, []
    for size in pieces:
        chunk = bytearray(raw[pos : pos + size])
        conn.receive_data(kind(chunk) if kind is not bytearray else chunk)
        chunk[:] = bytes(len(chunk))  # the caller reuses its buffer
        pos += size
        while (ev := conn.next_event()) is not NEED_DATA:
            events.append(ev)
        if pos < len(raw):
            assert not events and conn.buffered_bytes == pos - 28 + (28 if pos < 28 else 0)
    (ev,) = events
    assert ev == Request(5, c.CMD_WRITE, 0, 4096, len(payload), payload)
    assert conn.buffered_bytes == 0


def test_bad_write_payload_is_discarded_not_held():
    conn = cb.in_transmission(flags=c.FLAG_READ_ONLY)
    conn.receive_data(cb.request(c.CMD_WRITE, 1, 0, MIB) + bytes(512 * 1024))
    assert conn.next_event() is NEED_DATA
    assert conn.buffered_bytes == 0
    conn.receive_data(bytes(512 * 1024))
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and ev.error == c.NBD_EPERM


def test_over_large_write_is_still_einval_and_closing_stays_possible():
    conn = cb.in_transmission()
    conn.receive_data(cb.request(c.CMD_WRITE, 1, 0, c.MAX_PAYLOAD + 1))
    assert conn.next_event() is NEED_DATA  # its payload is read and dropped
    assert conn.buffered_bytes == 0


# -- requests in flight -----------------------------------------------------------------


def test_requests_in_flight_counts_events_out_and_replies_in():
    conn = cb.in_transmission(flags=c.FLAG_SEND_FLUSH, structured=True)
    conn.receive_data(
        cb.request(c.CMD_READ, 1, 0, 512)
        + cb.request(c.CMD_WRITE, 2, 0, 3, data=b"abc")
        + cb.request(c.CMD_FLUSH, 3)
        + cb.request(77, 4)  # BadRequest: it is owed a reply too
        + cb.request(c.CMD_WRITE, 5, 0, 4096)  # payload not here yet
    )
    seen = cb.events(conn)
    assert [type(ev) for ev in seen] == [Request, Request, Request, BadRequest]
    assert conn.requests_in_flight == 4  # the incomplete WRITE is not handed out yet
    conn.reply_read_header(1, 0, 512)
    conn.reply_ok(2)
    conn.reply_error(4, c.NBD_EINVAL)
    assert conn.requests_in_flight == 1
    conn.receive_data(bytes(4096))
    assert isinstance(conn.next_event(), Request)
    assert conn.requests_in_flight == 2
    conn.reply_ok(3)
    conn.reply_ok(5)
    assert conn.requests_in_flight == 0
    conn.reply_ok(6)  # a reply with none in flight leaves it at 0
    assert conn.requests_in_flight == 0


def test_a_refused_reply_does_not_count():
    conn = cb.in_transmission(structured=True)
    conn.receive_data(cb.request(c.CMD_READ, 1, 0, 512))
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.reply_read_header(1, 0, 0)
    with pytest.raises(LocalProtocolError):
        conn.reply_error(1, 9999)
    assert conn.requests_in_flight == 1


def test_block_status_reply_counts():
    conn = cb.in_transmission(structured=True, meta=True)
    conn.receive_data(cb.request(c.CMD_BLOCK_STATUS, 1, 0, 4096))
    conn.next_event()
    assert conn.requests_in_flight == 1
    conn.reply_block_status(1, [(4096, 0)])
    assert conn.requests_in_flight == 0


def test_disc_is_not_a_request_and_replies_after_it_still_count():
    conn = cb.in_transmission()
    conn.receive_data(cb.request(c.CMD_READ, 1, 0, 512) + cb.request(c.CMD_DISC, 2))
    cb.events(conn)
    assert conn.state is State.CLOSED and conn.requests_in_flight == 1
    conn.reply_read_header(1, 0, 512)
    assert conn.requests_in_flight == 0


def test_next_event_parses_only_when_called():
    """The I/O layer's back-pressure: not calling next_event leaves the
    requests unparsed in the buffer, and nothing is owed for them."""
    conn = cb.in_transmission()
    conn.receive_data(cb.request(c.CMD_READ, 1, 0, 8 * MIB) * 40)
    assert conn.requests_in_flight == 0 and conn.buffered_bytes == 40 * 28
    conn.next_event()
    assert conn.requests_in_flight == 1 and conn.buffered_bytes == 39 * 28
