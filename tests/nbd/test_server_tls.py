"""NBD_OPT_STARTTLS in the server machine: each TLS policy x each option,
before and after TLS, and the rules of proto.md's "TLS support"."""

from __future__ import annotations

import pytest

from tests.nbd import client_bytes as cb
from vdfarm.nbd import constants as c
from vdfarm.nbd import tls
from vdfarm.nbd.errors import LocalProtocolError, RemoteProtocolError
from vdfarm.nbd.events import Disconnect, ExportRequest, ListRequest, StartTLS
from vdfarm.nbd.server import NEED_DATA, ExportInfo, ServerConnection, TLSPolicy
from vdfarm.nbd.states import State

o = cb.option
INFO = ExportInfo(size=1 << 20, transmission_flags=c.FLAG_SEND_FLUSH)

OPTIONS = {
    "EXPORT_NAME": o(c.OPT_EXPORT_NAME, b"disk"),
    "ABORT": o(c.OPT_ABORT),
    "LIST": o(c.OPT_LIST),
    "LIST+data": o(c.OPT_LIST, b"x"),
    "STARTTLS": o(c.OPT_STARTTLS),
    "STARTTLS+data": o(c.OPT_STARTTLS, b"x"),
    "INFO": o(c.OPT_INFO, cb.go_data("disk")),
    "GO": o(c.OPT_GO, cb.go_data("disk")),
    "STRUCTURED_REPLY": o(c.OPT_STRUCTURED_REPLY),
    "LIST_META_CONTEXT": o(c.OPT_LIST_META_CONTEXT, cb.meta_data("disk")),
    "SET_META_CONTEXT": o(c.OPT_SET_META_CONTEXT, cb.meta_data("disk", ("base:allocation",))),
    "EXTENDED_HEADERS": o(c.OPT_EXTENDED_HEADERS),
    "unknown 999": o(999, b"x"),
}

# What a plain (TLS off) server does with each option: the answer does not
# change with TLS except for STARTTLS itself and the REQUIRE rules.
SERVED = {
    "EXPORT_NAME": "ExportRequest",
    "ABORT": "Disconnect",
    "LIST": "ListRequest",
    "LIST+data": "INVALID",
    "STARTTLS+data": "INVALID",
    "INFO": "ExportRequest",
    "GO": "ExportRequest",
    "STRUCTURED_REPLY": "ACK",
    "LIST_META_CONTEXT": "ACK",
    "SET_META_CONTEXT": "INVALID",  # structured replies not negotiated
    "EXTENDED_HEADERS": "UNSUP",
    "unknown 999": "UNSUP",
}
REQUIRED_BEFORE_TLS = {
    name: "TLS_REQD" for name in SERVED if name not in ("ABORT", "EXPORT_NAME", "STARTTLS+data")
} | {"ABORT": "Disconnect", "EXPORT_NAME": "close", "STARTTLS+data": "INVALID"}

EXPECTED = {
    ("off", False): SERVED | {"STARTTLS": "POLICY"},
    ("optional", False): SERVED | {"STARTTLS": "StartTLS"},
    ("require", False): REQUIRED_BEFORE_TLS | {"STARTTLS": "StartTLS"},
    ("optional", True): SERVED | {"STARTTLS": "INVALID"},
    ("require", True): SERVED | {"STARTTLS": "INVALID"},
}

REPLY_NAMES = {
    c.REP_ACK: "ACK",
    c.REP_ERR_UNSUP: "UNSUP",
    c.REP_ERR_POLICY: "POLICY",
    c.REP_ERR_INVALID: "INVALID",
    c.REP_ERR_TLS_REQD: "TLS_REQD",
}


def with_tls(policy: str) -> ServerConnection:
    """A machine in OPTIONS after STARTTLS, its ACK and a handshake."""
    conn = cb.started(tls=policy)
    conn.receive_data(o(c.OPT_STARTTLS))
    assert conn.next_event() == StartTLS()
    assert conn.state is State.TLS_HANDSHAKE and not conn.tls_active
    (ack,) = cb.parse_option_replies(conn.data_to_send())
    assert (ack.option, ack.type, ack.data) == (c.OPT_STARTTLS, c.REP_ACK, b"")
    conn.tls_started()
    assert conn.state is State.OPTIONS and conn.tls_active
    return conn


def outcome(conn: ServerConnection, raw: bytes) -> str:
    """What one option earns: an event's name, the type of the last reply
    the machine sent alone, or "close" (RemoteProtocolError)."""
    conn.receive_data(raw)
    try:
        ev = conn.next_event()
    except RemoteProtocolError:
        assert conn.state is State.ERROR
        return "close"
    if ev is NEED_DATA:
        replies = cb.parse_option_replies(conn.data_to_send())
        assert conn.state is State.OPTIONS
        return REPLY_NAMES[replies[-1].type]
    return type(ev).__name__


CASES = [
    (policy, active, name, expected)
    for (policy, active), answers in EXPECTED.items()
    for name, expected in answers.items()
]


@pytest.mark.parametrize("policy, tls_active, option, expected", CASES)
def test_each_policy_and_option_before_and_after_tls(policy, tls_active, option, expected):
    conn = with_tls(policy) if tls_active else cb.started(tls=policy)
    assert outcome(conn, OPTIONS[option]) == expected
    assert conn.tls_active is tls_active


def test_the_table_covers_every_option_in_every_mode():
    for answers in EXPECTED.values():
        assert set(answers) == set(OPTIONS)


@pytest.mark.parametrize("policy", ["off", "optional", "require"])
def test_tls_reqd_is_never_sent_with_tls_off_or_active(policy):
    # proto.md: NOTLS "MUST NOT respond to any option request with
    # NBD_REP_ERR_TLS_REQD"; neither may anyone once TLS is up.
    for active in (False, True):
        if active and policy == "off":
            continue
        if not active and policy == "require":
            continue
        assert "TLS_REQD" not in EXPECTED[policy, active].values()


def test_policy_parses_from_its_name_and_rejects_others():
    assert ServerConnection(tls="require").tls_policy is TLSPolicy.REQUIRE
    assert ServerConnection(tls=TLSPolicy.OPTIONAL).tls_policy is TLSPolicy.OPTIONAL
    assert ServerConnection().tls_policy is TLSPolicy.OFF
    with pytest.raises(ValueError):
        ServerConnection(tls="on")


def test_gate_table_has_a_row_for_every_possible_starttls():
    possible = {(p, False) for p in TLSPolicy} | {
        (p, True) for p in TLSPolicy if p is not TLSPolicy.OFF
    }
    assert set(tls.STARTTLS_GATE) == possible


# -- the STARTTLS rules ------------------------------------------------------------


@pytest.mark.parametrize("policy", ["optional", "require"])
@pytest.mark.parametrize(
    "after",
    [b"\x16\x03\x01", o(c.OPT_GO, cb.go_data("disk")), o(c.OPT_STARTTLS)],
    ids=["tls-hello-bytes", "plain-option", "starttls-again"],
)
def test_bytes_after_starttls_in_the_same_read_are_remote_error(policy, after):
    conn = cb.started(tls=policy)
    conn.receive_data(o(c.OPT_STARTTLS) + after)
    with pytest.raises(RemoteProtocolError, match="without waiting"):
        conn.next_event()
    assert conn.state is State.ERROR
    assert conn.data_to_send() == b""  # no ACK goes out: the connection is dropped
    assert not conn.tls_active


@pytest.mark.parametrize("policy", ["optional", "require"])
def test_bytes_fed_before_tls_started_break_the_protocol(policy):
    conn = cb.started(tls=policy)
    conn.receive_data(o(c.OPT_STARTTLS))
    assert conn.next_event() == StartTLS()
    conn.receive_data(o(c.OPT_GO, cb.go_data("disk")))  # plaintext, not waiting for the ACK
    assert conn.state is State.ERROR and conn.buffered_bytes == 0
    with pytest.raises(RemoteProtocolError, match="before the TLS handshake"):
        conn.tls_started()
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert not conn.tls_active


def test_next_event_between_starttls_and_tls_started_is_local_error():
    conn = cb.started(tls="require")
    conn.receive_data(o(c.OPT_STARTTLS))
    conn.next_event()
    with pytest.raises(LocalProtocolError, match="tls_started"):
        conn.next_event()
    assert conn.state is State.TLS_HANDSHAKE


@pytest.mark.parametrize("policy", ["off", "optional", "require"])
def test_tls_started_without_starttls_is_local_error(policy):
    conn = cb.started(tls=policy)
    with pytest.raises(LocalProtocolError):
        conn.tls_started()
    assert conn.state is State.OPTIONS and not conn.tls_active


def test_tls_started_twice_is_local_error():
    conn = with_tls("optional")
    with pytest.raises(LocalProtocolError):
        conn.tls_started()
    assert conn.tls_active


def test_second_starttls_is_invalid_and_tls_stays():
    conn = with_tls("require")
    conn.receive_data(o(c.OPT_STARTTLS))
    assert conn.next_event() is NEED_DATA
    (reply,) = cb.parse_option_replies(conn.data_to_send())
    assert cb.parse_option_error(reply) == (c.REP_ERR_INVALID, "TLS is already active")
    assert conn.tls_active and conn.state is State.OPTIONS


def test_starttls_refused_with_tls_off_is_policy():
    conn = cb.started()
    conn.receive_data(o(c.OPT_STARTTLS))
    assert conn.next_event() is NEED_DATA
    (reply,) = cb.parse_option_replies(conn.data_to_send())
    assert cb.parse_option_error(reply) == (c.REP_ERR_POLICY, "TLS not available")


def test_export_name_before_tls_under_require_closes_without_a_reply():
    conn = cb.started(tls="require")
    conn.receive_data(o(c.OPT_EXPORT_NAME, b"disk"))
    with pytest.raises(RemoteProtocolError, match="EXPORT_NAME before TLS"):
        conn.next_event()
    assert conn.data_to_send() == b"" and conn.state is State.ERROR


def test_starttls_with_data_then_without_under_require():
    conn = cb.started(tls="require")
    assert outcome(conn, o(c.OPT_STARTTLS, b"x")) == "INVALID"
    assert not conn.tls_active
    assert outcome(conn, o(c.OPT_STARTTLS)) == "StartTLS"


def test_eof_during_the_handshake_ends_in_disconnect():
    conn = cb.started(tls="require")
    conn.receive_data(o(c.OPT_STARTTLS))
    conn.next_event()
    conn.receive_data(b"")
    conn.tls_started()
    assert conn.next_event() == Disconnect(clean=False)


def test_plaintext_negotiation_is_forgotten_when_tls_starts():
    conn = cb.started(tls="optional")
    conn.receive_data(
        o(c.OPT_STRUCTURED_REPLY)
        + o(c.OPT_SET_META_CONTEXT, cb.meta_data("disk", ("base:allocation",)))
    )
    assert conn.next_event() is NEED_DATA and conn.structured_replies
    conn.data_to_send()
    conn.receive_data(o(c.OPT_STARTTLS))
    assert conn.next_event() == StartTLS()
    conn.data_to_send()
    conn.tls_started()
    assert not conn.structured_replies
    assert outcome(conn, o(c.OPT_STRUCTURED_REPLY)) == "ACK"  # not "already negotiated"
    conn.receive_data(o(c.OPT_GO, cb.go_data("disk")))
    conn.next_event()
    conn.accept_export(INFO)
    assert conn.meta_context_id is None  # the plaintext SET_META_CONTEXT is gone


# -- the application refusing a TLS-only export --------------------------------------


def pending(conn: ServerConnection, opt: int) -> ServerConnection:
    data = b"disk" if opt == c.OPT_EXPORT_NAME else cb.go_data("disk")
    conn.receive_data(o(opt, data))
    assert isinstance(conn.next_event(), ExportRequest)
    return conn


def test_optional_plaintext_go_can_be_refused_tls_reqd():
    conn = pending(cb.started(tls="optional"), c.OPT_GO)
    (reply,) = cb.parse_option_replies(conn.reject_export(c.REP_ERR_TLS_REQD, "TLS only"))
    assert reply.type == c.REP_ERR_TLS_REQD and conn.state is State.OPTIONS
    assert outcome(conn, o(c.OPT_STARTTLS)) == "StartTLS"


def test_optional_plaintext_export_name_refused_closes():
    conn = pending(cb.started(tls="optional"), c.OPT_EXPORT_NAME)
    assert conn.reject_export(c.REP_ERR_TLS_REQD) == b""
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("make", [lambda: cb.started(), lambda: with_tls("optional")])
def test_tls_reqd_from_the_application_is_refused_when_tls_is_off_or_active(make):
    conn = pending(make(), c.OPT_GO)
    with pytest.raises(LocalProtocolError, match="TLS_REQD"):
        conn.reject_export(c.REP_ERR_TLS_REQD)
    assert conn.state is State.EXPORT_ANSWER
    (reply,) = cb.parse_option_replies(conn.reject_export(c.REP_ERR_POLICY))
    assert reply.type == c.REP_ERR_POLICY


# -- what real clients send (libnbd, qemu, nbd-client) -------------------------------


@pytest.mark.parametrize("policy", ["optional", "require"])
def test_libnbd_sequence(policy):
    """nbdinfo nbds://: STARTTLS first, then STRUCTURED_REPLY,
    SET_META_CONTEXT and GO, all over TLS."""
    conn = with_tls(policy)
    assert outcome(conn, o(c.OPT_STRUCTURED_REPLY)) == "ACK"
    assert (
        outcome(conn, o(c.OPT_SET_META_CONTEXT, cb.meta_data("disk", ("base:allocation",))))
        == "ACK"
    )
    conn.receive_data(o(c.OPT_GO, cb.go_data("disk", (c.INFO_BLOCK_SIZE,))))
    ev = conn.next_event()
    assert ev == ExportRequest("disk", True, False, (c.INFO_BLOCK_SIZE,))
    replies = cb.parse_option_replies(conn.accept_export(INFO))
    assert replies[-1].type == c.REP_ACK
    assert conn.state is State.TRANSMISSION and conn.tls_active
    assert conn.structured_replies and conn.meta_context_id == c.META_CONTEXT_BASE_ALLOCATION_ID


@pytest.mark.parametrize("policy", ["optional", "require"])
@pytest.mark.parametrize("final", [c.OPT_GO, c.OPT_EXPORT_NAME])
def test_qemu_and_nbd_client_sequences(policy, final):
    """qemu (tls-creds-x509): STARTTLS then INFO / GO; nbd-client
    -certfile: STARTTLS then GO or EXPORT_NAME."""
    conn = with_tls(policy)
    if final == c.OPT_GO:
        pending(conn, c.OPT_INFO).accept_export(INFO)
    pending(conn, final).accept_export(INFO)
    assert conn.state is State.TRANSMISSION and conn.tls_active


def test_list_over_tls_under_require():
    conn = with_tls("require")
    conn.receive_data(o(c.OPT_LIST))
    assert conn.next_event() == ListRequest()
    *_, ack = cb.parse_option_replies(conn.send_export_list([("disk", "")]))
    assert ack.type == c.REP_ACK
