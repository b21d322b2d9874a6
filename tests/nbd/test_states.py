"""The state table of vdfarm.nbd.states, and the machine obeying it."""

from __future__ import annotations

import pytest

from tests.nbd import client_bytes as cb
from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import LocalProtocolError
from vdfarm.nbd.events import Disconnect, ExportRequest, Request, StartTLS
from vdfarm.nbd.server import ExportInfo
from vdfarm.nbd.states import TRANSITIONS, State, can, transition


def test_every_state_has_a_row_and_every_target_is_a_state():
    assert set(TRANSITIONS) == set(State)
    for row in TRANSITIONS.values():
        assert all(isinstance(target, State) for target in row.values())


def test_every_state_but_start_is_reachable():
    reached = {State.START}
    frontier = [State.START]
    while frontier:
        for target in TRANSITIONS[frontier.pop()].values():
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(State)


def test_final_states_only_allow_replies():
    assert TRANSITIONS[State.ERROR] == {}
    assert TRANSITIONS[State.CLOSED] == {"reply": State.CLOSED}


def test_every_state_but_the_final_ones_can_fail():
    # the answering states too: bytes keep arriving while the application
    # answers, and may break a limit or come before the TLS handshake
    failing = {state for state in State if can(state, "error")}
    assert failing == set(State) - {State.CLOSED, State.ERROR}


@pytest.mark.parametrize(
    "state, trigger",
    [
        (State.START, Request),
        (State.OPTIONS, "accept_go"),
        (State.TRANSMISSION, ExportRequest),
        (State.EXPORT_ANSWER, Disconnect),
        (State.CLOSED, "start"),
        (State.ERROR, "reply"),
        (State.OPTIONS, "tls_started"),
        (State.TLS_HANDSHAKE, StartTLS),
        (State.TLS_HANDSHAKE, ExportRequest),
        (State.TRANSMISSION, StartTLS),
    ],
)
def test_illegal_transition_raises(state, trigger):
    assert not can(state, trigger)
    with pytest.raises(LocalProtocolError, match=state.name):
        transition(state, trigger)


def test_illegal_call_on_the_machine_changes_nothing():
    conn = cb.in_transmission(structured=True)
    flags = conn.transmission_flags
    with pytest.raises(LocalProtocolError):
        conn.accept_export(ExportInfo(1, 0))
    with pytest.raises(LocalProtocolError):
        conn.start()
    assert conn.state is State.TRANSMISSION and conn.transmission_flags == flags
    conn.receive_data(cb.request(c.CMD_READ, 1, 0, 1))
    assert conn.next_event() == Request(1, c.CMD_READ, 0, 0, 1)


def test_tls_handshake_leads_back_to_options_only():
    assert transition(State.OPTIONS, StartTLS) is State.TLS_HANDSHAKE
    assert TRANSITIONS[State.TLS_HANDSHAKE] == {
        "tls_started": State.OPTIONS,
        "error": State.ERROR,
    }
