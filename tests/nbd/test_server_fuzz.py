"""Fuzzing the server machine. The invariant, in plain words: whatever the
client sends, the machine parses it into events or raises
RemoteProtocolError, never anything else; and feeding the same bytes whole
or byte by byte (or cut anywhere) gives the same events and the same end.

TLS: a client must wait for the ACK of NBD_OPT_STARTTLS, and what follows
comes over TLS, so "whole" means whole between two STARTTLS (the cut points
are where the byte-by-byte run saw StartTLS). Fed truly whole, a stream with
bytes after an accepted STARTTLS must fail there, and only there."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from vdfarm.nbd.server import NEED_DATA, ExportInfo, ServerConnection

MAX_PAYLOAD = 4096  # small, so oversize requests are cheap to generate
ALL = (
    c.FLAG_SEND_FLUSH
    | c.FLAG_SEND_FUA
    | c.FLAG_SEND_TRIM
    | c.FLAG_SEND_WRITE_ZEROES
    | c.FLAG_SEND_FAST_ZERO
    | c.FLAG_SEND_CACHE
    | c.FLAG_SEND_DF
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
names = st.text(max_size=8)
small_length = st.integers(0, MAX_PAYLOAD + 600)

options = st.one_of(
    st.builds(cb.option, st.one_of(st.integers(0, 12), u32), st.binary(max_size=48)),
    st.builds(
        lambda opt, name, infos: cb.option(opt, cb.go_data(name, tuple(infos))),
        st.sampled_from([c.OPT_GO, c.OPT_INFO]),
        names,
        st.lists(u16, max_size=4),
    ),
    st.builds(
        lambda opt, name, qs: cb.option(opt, cb.meta_data(name, tuple(qs))),
        st.sampled_from([c.OPT_LIST_META_CONTEXT, c.OPT_SET_META_CONTEXT]),
        names,
        st.lists(st.sampled_from(["base:", "base:allocation", "x-a:b", "zz"]), max_size=3),
    ),
    st.builds(
        lambda opt: cb.option(opt),
        st.sampled_from([c.OPT_STRUCTURED_REPLY, c.OPT_LIST, c.OPT_STARTTLS, c.OPT_ABORT]),
    ),
    st.builds(lambda name: cb.option(c.OPT_EXPORT_NAME, name.encode()), names),
    st.builds(lambda opt, length: cb.option(opt, length=length), u32, u32),  # lying length
)


@st.composite
def requests(draw):
    cmd = draw(st.one_of(st.integers(0, 9), u16))
    length = draw(st.one_of(small_length, u32))
    offset = draw(st.one_of(st.integers(0, 1 << 20), u64))
    flags = draw(st.one_of(st.sampled_from([0, 1, 2, 4, 8, 16, 32]), u16))
    raw = cb.request(cmd, draw(u64), offset, length, flags)
    if cmd == c.CMD_WRITE and length <= MAX_PAYLOAD + 600 and draw(st.booleans()):
        raw += bytes(length)  # a complete payload
    return raw


junk = st.binary(max_size=40)
handshake_streams = st.lists(st.one_of(options, requests(), junk), max_size=8).map(b"".join)
transmission_streams = st.lists(st.one_of(requests(), requests(), junk), max_size=10).map(b"".join)


def answer(conn: ServerConnection, ev, min_block: int) -> None:
    """Answer like an application would, deterministically from the event."""
    if isinstance(ev, StartTLS):
        conn.tls_started()  # the handshake, done by the I/O layer
    elif isinstance(ev, ExportRequest):
        if len(ev.name) % 3 == 2 and conn.tls_policy.value == "optional" and not conn.tls_active:
            conn.reject_export(c.REP_ERR_TLS_REQD, "TLS-only export")
        elif len(ev.name) % 2:
            conn.reject_export(c.REP_ERR_UNKNOWN, "odd name")
        else:
            conn.accept_export(
                ExportInfo(
                    1 << 30,
                    ALL,
                    "fuzz",
                    min_block=min_block,
                    preferred_block=4096,
                    max_block=MAX_PAYLOAD,
                )
            )
    elif isinstance(ev, ListRequest):
        conn.send_export_list([("disk", "a disk")])
    elif isinstance(ev, BadRequest):
        conn.reply_error(ev.cookie, ev.error, ev.message)
    elif isinstance(ev, Request):
        if ev.command == c.CMD_READ:
            conn.reply_read_header(ev.cookie, ev.offset, ev.length)
        elif ev.command == c.CMD_BLOCK_STATUS:
            conn.reply_block_status(ev.cookie, [(ev.length, 0), (512, 3)])
        else:
            conn.reply_ok(ev.cookie)


def drive(
    conn: ServerConnection, chunks: list[bytes], min_block: int, tls_cuts: list[int] | None = None
) -> list:
    """Feed chunks then EOF; return what happened. Only RemoteProtocolError
    may escape the machine: anything else fails the test. The number of
    bytes fed when each StartTLS came out is appended to `tls_cuts`."""
    log: list = []
    fed = 0
    for chunk in chunks + [b""]:
        conn.receive_data(chunk)
        fed += len(chunk)
        if conn.state.name == "ERROR":  # broken by receive_data: next_event says why
            try:
                conn.next_event()
            except RemoteProtocolError as exc:
                log.append(("sent", conn.data_to_send()))
                log.append(("error", str(exc)))
                return log
            raise AssertionError("ERROR state without RemoteProtocolError")
        while True:
            try:
                ev = conn.next_event()
            except RemoteProtocolError as exc:  # answers queued before it stay takeable
                log.append(("sent", conn.data_to_send()))
                log.append(("error", str(exc)))
                return log
            log.append(("sent", conn.data_to_send()))
            if ev is NEED_DATA:
                break
            log.append(ev)
            if isinstance(ev, Disconnect):
                return log
            if isinstance(ev, StartTLS) and tls_cuts is not None:
                tls_cuts.append(fed)
            answer(conn, ev, min_block)
            if conn.state.name == "CLOSED":  # a refused EXPORT_NAME
                return log
    raise AssertionError("EOF must end in Disconnect or an error")


def compact(log: list) -> list:
    """The log without the empty sends (their number depends on chunking)."""
    return [item for item in log if item != ("sent", b"")]


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(stream), *(p for p in cuts if 0 < p < len(stream))})
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


def sent_and_events(log: list) -> tuple[bytes, list]:
    log = compact(log)
    sent = b"".join(i[1] for i in log if isinstance(i, tuple) and i[0] == "sent")
    return sent, [i for i in log if not (isinstance(i, tuple) and i[0] == "sent")]


def check_both_ways(make_conn, stream: bytes, min_block: int, cuts: list[int] = ()) -> None:
    tls_cuts: list[int] = []
    bytewise = drive(
        make_conn(), [stream[i : i + 1] for i in range(len(stream))], min_block, tls_cuts
    )
    whole = drive(make_conn(), split(stream, tls_cuts), min_block)
    assert sent_and_events(whole) == sent_and_events(bytewise)
    if cuts:
        cut = drive(make_conn(), split(stream, [*cuts, *tls_cuts]), min_block)
        assert sent_and_events(cut) == sent_and_events(bytewise)
    if tls_cuts and tls_cuts[0] < len(stream):  # bytes after an accepted STARTTLS
        _, events = sent_and_events(drive(make_conn(), [stream], min_block))
        *before, last = events
        assert last[0] == "error" and "without waiting" in last[1]
        _, split_events = sent_and_events(bytewise)
        first_tls = split_events.index(StartTLS())
        assert before == split_events[:first_tls]


def greeted(**limits) -> ServerConnection:
    conn = ServerConnection(max_payload=MAX_PAYLOAD, **limits)
    conn.start()
    return conn


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


policies = st.sampled_from(["off", "optional", "require"])
limits = st.fixed_dictionaries(
    {
        "tls": policies,
        "max_options": st.sampled_from([3, c.MAX_OPTIONS]),
        "max_option_length": st.sampled_from([40, c.MAX_OPTION_LENGTH]),
    }
)


@FUZZ
@given(
    flags=st.one_of(st.just(3), st.just(1), u32),
    stream=handshake_streams,
    min_block=st.sampled_from([1, 512]),
    limits=limits,
)
def test_handshake_fuzz(flags, stream, min_block, limits):
    check_both_ways(lambda: greeted(**limits), cb.client_flags(flags) + stream, min_block)


@FUZZ
@given(
    policy=policies,
    before=st.lists(options, max_size=3).map(b"".join),
    after=st.lists(st.one_of(options, options, junk), max_size=6).map(b"".join),
    min_block=st.sampled_from([1, 512]),
)
def test_handshake_fuzz_around_starttls(policy, before, after, min_block):
    """Streams that do send STARTTLS, with options before and after it."""
    stream = cb.client_flags() + before + cb.option(c.OPT_STARTTLS) + after
    check_both_ways(lambda: greeted(tls=policy), stream, min_block)


@FUZZ
@given(stream=st.binary(max_size=200), policy=policies)
def test_raw_bytes_from_the_first_byte(stream, policy):
    check_both_ways(lambda: greeted(tls=policy), stream, 1)


@FUZZ
@given(
    structured=st.booleans(),
    meta=st.booleans(),
    read_only=st.booleans(),
    min_block=st.sampled_from([1, 512]),
    stream=transmission_streams,
    cuts=st.lists(st.integers(1, 4000), max_size=6),
)
def test_transmission_fuzz(structured, meta, read_only, min_block, stream, cuts):
    def make_conn():
        flags = ALL | (c.FLAG_READ_ONLY if read_only else 0)
        return cb.in_transmission(
            flags,
            structured=structured,
            meta=meta and structured,
            min_block=min_block,
            max_payload=MAX_PAYLOAD,
            max_block=MAX_PAYLOAD,
        )

    check_both_ways(make_conn, stream, min_block, cuts)
