"""How ServerConnection is put together (vdfarm.nbd.machine and the parts
over it): one chain of classes, every attribute in __slots__ exactly once,
no instance dict, and the names of vdfarm.nbd.server still there."""

from __future__ import annotations

import pytest

from vdfarm.nbd import events, machine, server
from vdfarm.nbd.handshake import Handshake
from vdfarm.nbd.machine import MachineCore
from vdfarm.nbd.server import NEED_DATA, ServerConnection
from vdfarm.nbd.transmission import Transmission


def test_one_chain_of_parts():
    assert ServerConnection.__mro__ == (
        ServerConnection,
        Handshake,
        Transmission,
        MachineCore,
        object,
    )


def test_each_attribute_is_declared_once_and_there_is_no_instance_dict():
    declared = [
        name for cls in ServerConnection.__mro__ for name in cls.__dict__.get("__slots__", ())
    ]
    assert len(declared) == len(set(declared))
    conn = ServerConnection()
    assert not hasattr(conn, "__dict__")
    for name in declared:  # the constructor sets every one
        getattr(conn, name)
    with pytest.raises(AttributeError):
        conn._not_declared = 1  # type: ignore[attr-defined]


def test_the_names_of_the_server_module_stay_importable():
    assert server.NEED_DATA is machine.NEED_DATA is NEED_DATA
    assert repr(NEED_DATA) == "NEED_DATA"
    assert server.__all__ == ["NEED_DATA", "ExportInfo", "ServerConnection", "TLSPolicy"]
    for name in (
        "ExportInfo",
        "TLSPolicy",
        "HandshakeEvent",
        "TransmissionEvent",
        "NextEvent",
        "_NeedData",
        "State",
        "Gate",
        "gate",
        "can",
        "transition",
        "advertised",
        "Payload",
        "LocalProtocolError",
        "RemoteProtocolError",
        "c",
        "wire",
    ):
        assert hasattr(server, name), name
    for name in ("Request", "BadRequest", "Disconnect", "ExportRequest", "ListRequest", "StartTLS"):
        assert getattr(server, name) is getattr(events, name)
