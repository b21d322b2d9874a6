"""States of an NBD server connection and the table of legal transitions.

Rules:
- A connection is in exactly one `State`. It moves only through
  `transition(state, trigger)`, which reads `TRANSITIONS`; a trigger missing
  from the current state's row is illegal: `transition` raises
  LocalProtocolError and nothing changes.
- Triggers are of two kinds. Remote ones are the event classes the parser
  emits (ExportRequest, StartTLS, Request, ...) plus two names:
  "client_flags" (the client answered the greeting) and "option_answered"
  (an option the machine answered by itself). Local ones are the names of
  the methods the application calls ("start", "accept_info",
  "tls_started", "reply", ...).
- A self-loop (Request in TRANSMISSION, "reply" in CLOSED...) is listed so
  that the table tells every legal move; the hot path does not look it up,
  because its parser only runs in the one state where those triggers exist
  (the tests check every emitted event against this table).
- RemoteProtocolError moves any state but CLOSED and ERROR to ERROR
  (trigger "error"): the reading states when a message breaks the protocol,
  the answering states (EXPORT_ANSWER, LIST_ANSWER, TLS_HANDSHAKE) when
  bytes pile up past the handshake limit while the application works, or
  arrive before the TLS handshake. Nothing leaves ERROR or CLOSED, except
  replies to requests that were already received before the client
  disconnected.
- Whether TLS is active is not a state of this table: it is a fact of the
  connection that lasts through every later state (the machine's
  `tls_active`); what it changes is the table of `vdfarm.nbd.tls`.
"""

from __future__ import annotations

import enum

from vdfarm.nbd.errors import LocalProtocolError
from vdfarm.nbd.events import (
    BadRequest,
    Disconnect,
    ExportRequest,
    ListRequest,
    Request,
    StartTLS,
)


class State(enum.Enum):
    START = "START"  # nothing sent yet: call start()
    CLIENT_FLAGS = "CLIENT_FLAGS"  # greeting sent, waiting for the 32-bit client flags
    OPTIONS = "OPTIONS"  # option haggling: reading the next option
    EXPORT_ANSWER = "EXPORT_ANSWER"  # ExportRequest out: accept_export / reject_export
    LIST_ANSWER = "LIST_ANSWER"  # ListRequest out: send_export_list
    TLS_HANDSHAKE = "TLS_HANDSHAKE"  # StartTLS out: handshake, then tls_started
    TRANSMISSION = "TRANSMISSION"  # reading requests, replies allowed
    CLOSED = "CLOSED"  # the client ended the session (cleanly)
    ERROR = "ERROR"  # the client broke the protocol: drop the connection


S = State

TRANSITIONS: dict[State, dict[object, State]] = {
    S.START: {"start": S.CLIENT_FLAGS, "error": S.ERROR},
    S.CLIENT_FLAGS: {
        "client_flags": S.OPTIONS,
        Disconnect: S.CLOSED,
        "error": S.ERROR,
    },
    S.OPTIONS: {
        "option_answered": S.OPTIONS,
        ExportRequest: S.EXPORT_ANSWER,
        ListRequest: S.LIST_ANSWER,
        StartTLS: S.TLS_HANDSHAKE,
        Disconnect: S.CLOSED,
        "error": S.ERROR,
    },
    S.EXPORT_ANSWER: {
        "accept_info": S.OPTIONS,  # NBD_OPT_INFO answered: haggling goes on
        "accept_go": S.TRANSMISSION,  # NBD_OPT_GO / EXPORT_NAME accepted
        "reject": S.OPTIONS,  # error reply to INFO / GO
        "reject_legacy": S.CLOSED,  # EXPORT_NAME refused: the server must close
        "error": S.ERROR,
    },
    S.LIST_ANSWER: {"send_export_list": S.OPTIONS, "error": S.ERROR},
    # The ACK of STARTTLS is queued; no plaintext byte may arrive until the
    # handshake is done. Option haggling then goes on, over TLS.
    S.TLS_HANDSHAKE: {"tls_started": S.OPTIONS, "error": S.ERROR},
    S.TRANSMISSION: {
        Request: S.TRANSMISSION,
        BadRequest: S.TRANSMISSION,
        "reply": S.TRANSMISSION,
        Disconnect: S.CLOSED,
        "error": S.ERROR,
    },
    # Replies stay legal after NBD_CMD_DISC or EOF: the server must still
    # answer the requests it received before (the machine refuses them if
    # transmission was never entered).
    S.CLOSED: {"reply": S.CLOSED},
    S.ERROR: {},
}


def transition(state: State, trigger: object) -> State:
    """The state after `trigger` in `state`.

    Raises LocalProtocolError if the table has no such move.
    """
    new = TRANSITIONS[state].get(trigger)
    if new is None:
        name = getattr(trigger, "__name__", trigger)
        raise LocalProtocolError(f"{name} is not allowed in state {state.name}")
    return new


def can(state: State, trigger: object) -> bool:
    """True if `trigger` is legal in `state`."""
    return trigger in TRANSITIONS[state]
