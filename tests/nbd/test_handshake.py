"""Handshake phase (vdfarm.nbd.handshake): every option, every bad input."""

from __future__ import annotations

import pytest

from tests.nbd import client_bytes as cb
from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import LocalProtocolError, RemoteProtocolError
from vdfarm.nbd.events import Disconnect, ExportRequest, ListRequest
from vdfarm.nbd.server import NEED_DATA, ExportInfo, ServerConnection
from vdfarm.nbd.states import State

INFO = ExportInfo(size=1 << 20, transmission_flags=c.FLAG_SEND_FLUSH, description="a disk")


def only_reply(conn: ServerConnection) -> cb.OptionReply:
    (reply,) = cb.parse_option_replies(conn.data_to_send())
    return reply


def answer_alone(conn: ServerConnection, raw: bytes) -> list[cb.OptionReply]:
    """Feed one option the machine answers by itself; return its replies."""
    conn.receive_data(raw)
    assert conn.next_event() is NEED_DATA
    assert conn.state is State.OPTIONS
    return cb.parse_option_replies(conn.data_to_send())


# -- greeting and client flags -------------------------------------------------------


def test_greeting_offers_fixed_newstyle_and_no_zeroes():
    conn = ServerConnection()
    assert cb.parse_greeting(conn.start()) == c.FLAG_FIXED_NEWSTYLE | c.FLAG_NO_ZEROES
    assert conn.state is State.CLIENT_FLAGS


def test_start_twice_is_local_error_and_changes_nothing():
    conn = ServerConnection()
    conn.start()
    with pytest.raises(LocalProtocolError):
        conn.start()
    assert conn.state is State.CLIENT_FLAGS


def test_next_event_before_start_is_local_error():
    with pytest.raises(LocalProtocolError):
        ServerConnection().next_event()


@pytest.mark.parametrize(
    "flags, message",
    [
        (c.FLAG_C_FIXED_NEWSTYLE | 1 << 2, "unknown client flags 0x4"),
        (c.FLAG_C_FIXED_NEWSTYLE | 1 << 31, "unknown client flags 0x80000000"),
        (0, "fixed newstyle"),
        (c.FLAG_C_NO_ZEROES, "fixed newstyle"),
    ],
)
def test_bad_client_flags_are_remote_errors(flags, message):
    conn = ServerConnection()
    conn.start()
    conn.receive_data(cb.client_flags(flags))
    with pytest.raises(RemoteProtocolError, match=message):
        conn.next_event()
    assert conn.state is State.ERROR
    with pytest.raises(RemoteProtocolError):  # and it stays failed
        conn.next_event()


def test_client_flags_byte_by_byte():
    conn = ServerConnection()
    conn.start()
    for byte in cb.client_flags()[:-1]:
        conn.receive_data(bytes([byte]))
        assert conn.next_event() is NEED_DATA
        assert conn.state is State.CLIENT_FLAGS
    conn.receive_data(cb.client_flags()[-1:])
    assert conn.next_event() is NEED_DATA
    assert conn.state is State.OPTIONS


def test_eof_before_client_flags_is_a_disconnect():
    conn = ServerConnection()
    conn.start()
    conn.receive_data(b"")
    assert conn.next_event() == Disconnect(clean=False)
    assert conn.state is State.CLOSED


def test_eof_inside_client_flags_is_remote_error():
    conn = ServerConnection()
    conn.start()
    conn.receive_data(b"\0\0")
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="mid-handshake"):
        conn.next_event()


def test_data_after_eof_is_local_error():
    conn = cb.started()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


# -- option framing -----------------------------------------------------------------


def test_bad_option_magic_is_remote_error():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_LIST, magic=0x1234))
    with pytest.raises(RemoteProtocolError, match="bad option magic"):
        conn.next_event()
    assert conn.state is State.ERROR


def test_option_longer_than_limit_fails_on_its_header_alone():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_GO, length=c.MAX_OPTION_LENGTH + 1))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        conn.next_event()


def test_option_at_the_limit_is_read():
    conn = cb.started()
    assert answer_alone(conn, cb.option(999, bytes(c.MAX_OPTION_LENGTH)))[0].type == c.REP_ERR_UNSUP


def test_eof_between_options_is_a_disconnect():
    conn = cb.started()
    conn.receive_data(b"")
    assert conn.next_event() == Disconnect(clean=False)
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("cut", [1, 15, 16, 20])
def test_eof_inside_an_option_is_remote_error(cut):
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_GO, cb.go_data("disk"))[:cut])
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="mid-option"):
        conn.next_event()


# -- options the machine answers alone ----------------------------------------------


def test_structured_reply_ack_then_second_is_invalid():
    conn = cb.started()
    (ack,) = answer_alone(conn, cb.option(c.OPT_STRUCTURED_REPLY))
    assert (ack.option, ack.type, ack.data) == (c.OPT_STRUCTURED_REPLY, c.REP_ACK, b"")
    assert conn.structured_replies
    (again,) = answer_alone(conn, cb.option(c.OPT_STRUCTURED_REPLY))
    assert again.type == c.REP_ERR_INVALID
    assert conn.structured_replies


def test_structured_reply_with_data_is_invalid_and_not_negotiated():
    conn = cb.started()
    (reply,) = answer_alone(conn, cb.option(c.OPT_STRUCTURED_REPLY, b"xx"))
    assert reply.type == c.REP_ERR_INVALID
    assert not conn.structured_replies


def test_starttls_is_refused_by_policy():
    conn = cb.started()
    (reply,) = answer_alone(conn, cb.option(c.OPT_STARTTLS))
    assert cb.parse_option_error(reply) == (c.REP_ERR_POLICY, "TLS not available")
    (reply,) = answer_alone(conn, cb.option(c.OPT_STARTTLS, b"x"))
    assert reply.type == c.REP_ERR_INVALID


@pytest.mark.parametrize("opt", [c.OPT_EXTENDED_HEADERS, c.OPT_PEEK_EXPORT, 0, 12, 999, 0xFFFFFFFF])
def test_unknown_and_unsupported_options_get_unsup_and_haggling_goes_on(opt):
    conn = cb.started()
    (reply,) = answer_alone(conn, cb.option(opt, b"some data"))
    assert (reply.option, reply.type) == (opt, c.REP_ERR_UNSUP)
    conn.receive_data(cb.option(c.OPT_GO, cb.go_data("disk")))
    assert conn.next_event() == ExportRequest("disk", go=True, legacy=False, info_requests=())


@pytest.mark.parametrize("data", [b"", b"ignored"])
def test_abort_acks_then_disconnects(data):
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_ABORT, data))
    assert conn.next_event() == Disconnect()
    assert conn.state is State.CLOSED
    reply = only_reply(conn)
    assert (reply.option, reply.type) == (c.OPT_ABORT, c.REP_ACK)
    assert conn.next_event() == Disconnect()


def test_list_meta_context_without_queries_lists_base_allocation():
    conn = cb.started()
    ctx, ack = answer_alone(conn, cb.option(c.OPT_LIST_META_CONTEXT, cb.meta_data("disk")))
    assert ctx.type == c.REP_META_CONTEXT
    assert cb.parse_meta_context(ctx.data) == (0, "base:allocation")
    assert ack.type == c.REP_ACK


@pytest.mark.parametrize(
    "queries, listed",
    [
        (("base:",), True),
        (("base:allocation",), True),
        (("x-foo:bar", "base:allocation", "base:"), True),
        (("base:other",), False),
        (("qemu:dirty-bitmap:a",), False),
        (("nocolon",), False),
    ],
)
def test_list_meta_context_queries(queries, listed):
    conn = cb.started()
    replies = answer_alone(conn, cb.option(c.OPT_LIST_META_CONTEXT, cb.meta_data("", queries)))
    assert replies[-1].type == c.REP_ACK
    assert [cb.parse_meta_context(r.data) for r in replies[:-1]] == (
        [(0, "base:allocation")] if listed else []
    )


def test_set_meta_context_needs_structured_replies():
    conn = cb.started()
    (reply,) = answer_alone(
        conn, cb.option(c.OPT_SET_META_CONTEXT, cb.meta_data("disk", ("base:allocation",)))
    )
    assert reply.type == c.REP_ERR_INVALID


def negotiate_meta(conn, name, queries):
    answer_alone(conn, cb.option(c.OPT_STRUCTURED_REPLY))
    return answer_alone(conn, cb.option(c.OPT_SET_META_CONTEXT, cb.meta_data(name, queries)))


def go(conn, name, info=INFO):
    conn.receive_data(cb.option(c.OPT_GO, cb.go_data(name)))
    assert isinstance(conn.next_event(), ExportRequest)
    return conn.accept_export(info)


def test_set_meta_context_selects_base_allocation_for_the_same_export():
    conn = cb.started()
    ctx, ack = negotiate_meta(conn, "disk", ("base:allocation", "base:allocation", "x-a:b"))
    assert cb.parse_meta_context(ctx.data) == (c.META_CONTEXT_BASE_ALLOCATION_ID, "base:allocation")
    assert ack.type == c.REP_ACK
    go(conn, "disk")
    assert conn.meta_context_id == c.META_CONTEXT_BASE_ALLOCATION_ID


def test_meta_context_for_another_export_is_not_kept():
    conn = cb.started()
    negotiate_meta(conn, "other", ("base:allocation",))
    go(conn, "disk")
    assert conn.meta_context_id is None


@pytest.mark.parametrize("queries", [(), ("base:",), ("base:nope",)])
def test_set_meta_context_without_a_match_clears_the_selection(queries):
    conn = cb.started()
    negotiate_meta(conn, "disk", ("base:allocation",))
    (ack,) = answer_alone(conn, cb.option(c.OPT_SET_META_CONTEXT, cb.meta_data("disk", queries)))
    assert ack.type == c.REP_ACK
    go(conn, "disk")
    assert conn.meta_context_id is None


def test_failed_set_meta_context_clears_the_selection():
    conn = cb.started()
    negotiate_meta(conn, "disk", ("base:allocation",))
    (bad,) = answer_alone(conn, cb.option(c.OPT_SET_META_CONTEXT, b"\0\0\0\x09disk"))
    assert bad.type == c.REP_ERR_INVALID
    go(conn, "disk")
    assert conn.meta_context_id is None


@pytest.mark.parametrize("opt", [c.OPT_LIST_META_CONTEXT, c.OPT_SET_META_CONTEXT])
@pytest.mark.parametrize(
    "data",
    [
        b"",  # no name length
        b"\0\0\0\x05disk",  # name past the option
        b"\0\0\0\x04disk",  # no query count
        b"\0\0\0\x00\0\0\0\x01",  # one query announced, none there
        b"\0\0\0\x00\0\0\0\x01\0\0\0\x10base:",  # query past the option
        b"\0\0\0\x00\0\0\0\x00extra",  # trailing bytes
        b"\0\0\0\x02\xff\xfe\0\0\0\x00",  # name not UTF-8
        b"\0\0\0\x01\x00\0\0\0\x00",  # name with a NUL
    ],
)
def test_malformed_meta_context_is_invalid_and_haggling_goes_on(opt, data):
    conn = cb.started()
    answer_alone(conn, cb.option(c.OPT_STRUCTURED_REPLY))
    (reply,) = answer_alone(conn, cb.option(opt, data))
    assert (reply.option, reply.type) == (opt, c.REP_ERR_INVALID)


# -- options the application answers -------------------------------------------------


def test_list_round_trip():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_LIST))
    assert conn.next_event() == ListRequest()
    assert conn.state is State.LIST_ANSWER
    out = conn.send_export_list([("disk", "first disk"), ("é", "")])
    *entries, ack = cb.parse_option_replies(out)
    assert [cb.parse_server_entry(e.data) for e in entries] == [("disk", "first disk"), ("é", "")]
    assert all(e.type == c.REP_SERVER and e.option == c.OPT_LIST for e in entries)
    assert ack.type == c.REP_ACK
    assert conn.state is State.OPTIONS


def test_list_with_data_is_invalid():
    conn = cb.started()
    (reply,) = answer_alone(conn, cb.option(c.OPT_LIST, b"x"))
    assert reply.type == c.REP_ERR_INVALID


def test_export_list_with_a_bad_name_is_local_error_and_changes_nothing():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_LIST))
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send_export_list([("a\0b", "")])
    assert conn.state is State.LIST_ANSWER
    assert cb.parse_option_replies(conn.send_export_list([]))[0].type == c.REP_ACK


def test_info_then_go_with_every_info_request():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_INFO, cb.go_data("disk")))
    assert conn.next_event() == ExportRequest("disk", go=False, legacy=False, info_requests=())
    export, block, ack = cb.parse_option_replies(conn.accept_export(INFO))
    assert cb.parse_info(export.data) == (
        c.INFO_EXPORT,
        (1 << 20, c.FLAG_HAS_FLAGS | c.FLAG_SEND_FLUSH),
    )
    assert cb.parse_info(block.data) == (c.INFO_BLOCK_SIZE, (1, 4096, c.MAX_PAYLOAD))
    assert (ack.option, ack.type) == (c.OPT_INFO, c.REP_ACK)
    assert conn.state is State.OPTIONS and conn.transmission_flags is None

    asked = (c.INFO_NAME, c.INFO_DESCRIPTION, c.INFO_BLOCK_SIZE, 77)
    conn.receive_data(cb.option(c.OPT_GO, cb.go_data("disk", asked)))
    assert conn.next_event() == ExportRequest("disk", go=True, legacy=False, info_requests=asked)
    replies = cb.parse_option_replies(conn.accept_export(INFO))
    assert replies[-1].type == c.REP_ACK
    assert all(r.option == c.OPT_GO for r in replies)
    infos = dict(cb.parse_info(r.data) for r in replies[:-1])
    assert infos == {
        c.INFO_EXPORT: (1 << 20, c.FLAG_HAS_FLAGS | c.FLAG_SEND_FLUSH),
        c.INFO_NAME: "disk",
        c.INFO_DESCRIPTION: "a disk",
        c.INFO_BLOCK_SIZE: (1, 4096, c.MAX_PAYLOAD),
    }
    assert conn.state is State.TRANSMISSION
    assert conn.export_name == "disk"
    assert conn.transmission_flags == c.FLAG_HAS_FLAGS | c.FLAG_SEND_FLUSH


def test_go_reject_is_an_error_reply_and_haggling_goes_on():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_GO, cb.go_data("nope")))
    conn.next_event()
    (reply,) = cb.parse_option_replies(conn.reject_export(c.REP_ERR_UNKNOWN, "no such disk"))
    assert reply.option == c.OPT_GO
    assert cb.parse_option_error(reply) == (c.REP_ERR_UNKNOWN, "no such disk")
    assert conn.state is State.OPTIONS
    go(conn, "disk")
    assert conn.state is State.TRANSMISSION


def test_reject_with_a_non_error_code_is_local_error():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_GO, cb.go_data("d")))
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.reject_export(c.REP_ACK)
    assert conn.state is State.EXPORT_ANSWER


@pytest.mark.parametrize("opt", [c.OPT_INFO, c.OPT_GO])
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0\0\0\x00\0",  # 5 bytes: too short
        b"\0\0\0\x09disk\0\0",  # name length past the option
        b"\0\0\0\x04disk\0\x01",  # one info request announced, none there
        b"\0\0\0\x04disk\0\x00\0\x01",  # trailing bytes
        b"\0\0\0\x02\xc3\x28\0\x00",  # name not UTF-8
        b"\0\0\0\x02a\0\0\x00",  # name with a NUL
    ],
)
def test_malformed_info_or_go_is_invalid(opt, data):
    conn = cb.started()
    (reply,) = answer_alone(conn, cb.option(opt, data))
    assert (reply.option, reply.type) == (opt, c.REP_ERR_INVALID)


def test_export_name_longer_than_nbd_strings_allow_is_invalid():
    conn = cb.started()
    (reply,) = answer_alone(conn, cb.option(c.OPT_GO, cb.go_data("x" * 4097)))
    assert reply.type == c.REP_ERR_INVALID


@pytest.mark.parametrize(
    "client, tail",
    [
        (c.FLAG_C_FIXED_NEWSTYLE | c.FLAG_C_NO_ZEROES, b""),
        (c.FLAG_C_FIXED_NEWSTYLE, bytes(124)),
    ],
)
def test_export_name_accept(client, tail):
    conn = cb.started(client)
    conn.receive_data(cb.option(c.OPT_EXPORT_NAME, b"disk"))
    assert conn.next_event() == ExportRequest("disk", go=True, legacy=True, info_requests=())
    out = conn.accept_export(INFO)
    assert (
        out
        == (1 << 20).to_bytes(8, "big")
        + (c.FLAG_HAS_FLAGS | c.FLAG_SEND_FLUSH).to_bytes(2, "big")
        + tail
    )
    assert conn.state is State.TRANSMISSION


def test_export_name_reject_closes():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_EXPORT_NAME, b"nope"))
    conn.next_event()
    assert conn.reject_export(c.REP_ERR_UNKNOWN, "no") == b""
    assert conn.state is State.CLOSED
    assert conn.next_event() == Disconnect()
    with pytest.raises(LocalProtocolError):
        conn.reply_ok(1)


def test_export_name_that_is_not_a_string_is_remote_error():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_EXPORT_NAME, b"\xff"))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_answers_carry_the_bytes_queued_before_them_in_order():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_STRUCTURED_REPLY) + cb.option(c.OPT_GO, cb.go_data("disk")))
    assert isinstance(conn.next_event(), ExportRequest)
    replies = cb.parse_option_replies(conn.accept_export(INFO))
    assert (replies[0].option, replies[0].type) == (c.OPT_STRUCTURED_REPLY, c.REP_ACK)
    assert replies[-1].option == c.OPT_GO
    assert conn.data_to_send() == b""


def test_next_event_while_an_answer_is_owed_is_local_error():
    conn = cb.started()
    conn.receive_data(cb.option(c.OPT_LIST))
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.accept_export(INFO)
    assert conn.state is State.LIST_ANSWER


def test_answers_without_a_request_are_local_errors():
    conn = cb.started()
    for call in (
        lambda: conn.accept_export(INFO),
        lambda: conn.reject_export(),
        lambda: conn.send_export_list([]),
        lambda: conn.reply_ok(1),
    ):
        with pytest.raises(LocalProtocolError):
            call()
    assert conn.state is State.OPTIONS


# -- what accept_export advertises -----------------------------------------------------


def pending_go(structured: bool = False) -> ServerConnection:
    conn = cb.started()
    if structured:
        answer_alone(conn, cb.option(c.OPT_STRUCTURED_REPLY))
    conn.receive_data(cb.option(c.OPT_GO, cb.go_data("disk")))
    conn.next_event()
    return conn


@pytest.mark.parametrize(
    "info",
    [
        ExportInfo(size=1 << 64, transmission_flags=0),
        ExportInfo(size=-1, transmission_flags=0),
        ExportInfo(size=1, transmission_flags=c.FLAG_SEND_RESIZE),
        ExportInfo(size=1, transmission_flags=c.FLAG_BLOCK_STAT_PAYLOAD),
        ExportInfo(size=1, transmission_flags=1 << 16),
        ExportInfo(size=1, transmission_flags=c.FLAG_SEND_FAST_ZERO),
        ExportInfo(size=1, transmission_flags=0, min_block=3),
        ExportInfo(size=1, transmission_flags=0, min_block=1 << 17, preferred_block=1 << 17),
        ExportInfo(size=1, transmission_flags=0, preferred_block=256),
        ExportInfo(size=1, transmission_flags=0, min_block=8192, preferred_block=4096),
        ExportInfo(size=1, transmission_flags=0, max_block=1024),
    ],
)
def test_unadvertisable_export_info_is_local_error_and_changes_nothing(info):
    conn = pending_go()
    with pytest.raises(LocalProtocolError):
        conn.accept_export(info)
    assert conn.state is State.EXPORT_ANSWER
    conn.accept_export(INFO)
    assert conn.state is State.TRANSMISSION


@pytest.mark.parametrize(
    "structured, sent", [(False, c.FLAG_HAS_FLAGS), (True, c.FLAG_HAS_FLAGS | c.FLAG_SEND_DF)]
)
def test_send_df_is_advertised_only_with_structured_replies(structured, sent):
    conn = pending_go(structured)
    replies = cb.parse_option_replies(conn.accept_export(ExportInfo(1, c.FLAG_SEND_DF)))
    infos = dict(cb.parse_info(r.data) for r in replies if r.type == c.REP_INFO)
    assert infos[c.INFO_EXPORT] == (1, sent)
    assert conn.transmission_flags == sent


def test_advertised_maximum_is_capped_by_the_machine_limit():
    conn = cb.started(max_payload=1 << 20)
    conn.receive_data(cb.option(c.OPT_GO, cb.go_data("disk")))
    conn.next_event()
    replies = cb.parse_option_replies(conn.accept_export(ExportInfo(1, 0, max_block=1 << 26)))
    assert cb.parse_info(replies[1].data) == (c.INFO_BLOCK_SIZE, (1, 4096, 1 << 20))
    assert conn.max_payload == 1 << 20


def test_constructor_rejects_impossible_max_payload():
    with pytest.raises(ValueError):
        ServerConnection(max_payload=0)
    with pytest.raises(ValueError):
        ServerConnection(max_payload=1 << 32)
