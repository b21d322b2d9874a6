"""Events of vdfarm.nbd.events: slots, value equality, readable repr."""

from __future__ import annotations

import pytest

from vdfarm.nbd.events import (
    BadRequest,
    Disconnect,
    ExportRequest,
    ListRequest,
    Request,
    StartTLS,
)


@pytest.mark.parametrize(
    "event",
    [
        ExportRequest("a", True),
        ListRequest(),
        Request(1, 0, 0, 0, 1),
        BadRequest(1, 22, "x"),
        Disconnect(),
        StartTLS(),
    ],
)
def test_events_have_slots_only(event):
    assert not hasattr(event, "__dict__")
    with pytest.raises(AttributeError):
        event.unexpected = 1


def test_value_equality():
    assert Request(1, 1, 0, 0, 3, b"abc") == Request(1, 1, 0, 0, 3, memoryview(b"abc"))
    assert Request(1, 1, 0, 0, 3, b"abc") != Request(1, 1, 0, 0, 3, b"abd")
    assert Disconnect() == Disconnect() and Disconnect() != ListRequest()
    assert StartTLS() == StartTLS() and StartTLS() != ListRequest()
    assert ExportRequest("a", True) != ExportRequest("a", True, legacy=True)


def test_repr_names_the_fields():
    assert repr(BadRequest(5, 22, "why")) == "BadRequest(cookie=5, error=22, message='why')"
