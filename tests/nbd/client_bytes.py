"""A tiny in-memory NBD client for the tests: builds the bytes a client sends
and parses back every byte the server machine produces.

Rules: independent of vdfarm.nbd.wire (its own struct layouts, written from
proto.md), so a wrong layout in the machine cannot hide behind the same
wrong layout here. Every parser consumes its input exactly or fails.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from vdfarm.nbd import constants as c
from vdfarm.nbd.server import NEED_DATA, ExportInfo, ServerConnection

# -- client -> server ------------------------------------------------------------


def client_flags(flags: int = c.FLAG_C_FIXED_NEWSTYLE | c.FLAG_C_NO_ZEROES) -> bytes:
    return struct.pack(">I", flags)


def option(
    opt: int, data: bytes = b"", magic: int = c.IHAVEOPT, length: int | None = None
) -> bytes:
    return struct.pack(">QII", magic, opt, len(data) if length is None else length) + data


def go_data(name: str = "", infos: tuple[int, ...] = ()) -> bytes:
    raw = name.encode()
    return (
        struct.pack(">I", len(raw))
        + raw
        + struct.pack(">H", len(infos))
        + b"".join(struct.pack(">H", i) for i in infos)
    )


def meta_data(name: str = "", queries: tuple[str, ...] = ()) -> bytes:
    raw = name.encode()
    out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q.encode())) + q.encode()
    return out


def request(
    cmd: int,
    cookie: int = 1,
    offset: int = 0,
    length: int = 0,
    flags: int = 0,
    data: bytes = b"",
    magic: int = c.REQUEST_MAGIC,
) -> bytes:
    return struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length) + data


# -- server -> client ------------------------------------------------------------


def parse_greeting(raw: bytes) -> int:
    """The handshake flags of a newstyle greeting."""
    assert len(raw) == 18, raw
    magic, ihaveopt, flags = struct.unpack(">QQH", raw)
    assert magic == c.NBDMAGIC and ihaveopt == c.IHAVEOPT
    return flags


@dataclass
class OptionReply:
    option: int
    type: int
    data: bytes


def parse_option_replies(raw: bytes) -> list[OptionReply]:
    out = []
    pos = 0
    while pos < len(raw):
        assert len(raw) - pos >= 20, "truncated option reply header"
        magic, opt, rtype, length = struct.unpack_from(">QIII", raw, pos)
        assert magic == c.REPLY_MAGIC_OPT, hex(magic)
        data = raw[pos + 20 : pos + 20 + length]
        assert len(data) == length, "truncated option reply data"
        out.append(OptionReply(opt, rtype, data))
        pos += 20 + length
    return out


def parse_info(data: bytes) -> tuple[int, object]:
    """(info type, value) of an NBD_REP_INFO payload."""
    (itype,) = struct.unpack_from(">H", data)
    body = data[2:]
    if itype == c.INFO_EXPORT:
        assert len(body) == 10
        return itype, struct.unpack(">QH", body)
    if itype == c.INFO_BLOCK_SIZE:
        assert len(body) == 12
        return itype, struct.unpack(">III", body)
    return itype, body.decode()


def parse_server_entry(data: bytes) -> tuple[str, str]:
    (n,) = struct.unpack_from(">I", data)
    assert n <= len(data) - 4
    return data[4 : 4 + n].decode(), data[4 + n :].decode()


def parse_meta_context(data: bytes) -> tuple[int, str]:
    (ctx,) = struct.unpack_from(">I", data)
    return ctx, data[4:].decode()


def parse_option_error(reply: OptionReply) -> tuple[int, str]:
    assert reply.type & c.REP_FLAG_ERROR
    return reply.type, reply.data.decode()


def parse_simple(raw: bytes) -> tuple[int, int, bytes]:
    """(error, cookie, rest) of a simple reply."""
    magic, error, cookie = struct.unpack_from(">IIQ", raw)
    assert magic == c.SIMPLE_REPLY_MAGIC, hex(magic)
    return error, cookie, raw[16:]


@dataclass
class Chunk:
    flags: int
    type: int
    cookie: int
    payload: bytes


def parse_chunk(raw: bytes, payload_follows: int = 0) -> Chunk:
    """One structured chunk occupying all of `raw`, except `payload_follows`
    payload bytes the caller sends separately (READ data)."""
    magic, flags, rtype, cookie, length = struct.unpack_from(">IHHQI", raw)
    assert magic == c.STRUCTURED_REPLY_MAGIC, hex(magic)
    payload = raw[20:]
    assert len(payload) + payload_follows == length, (len(payload), payload_follows, length)
    return Chunk(flags, rtype, cookie, payload)


def parse_error_chunk(raw: bytes) -> tuple[int, int, str]:
    """(cookie, error, message) of a final NBD_REPLY_TYPE_ERROR chunk."""
    ch = parse_chunk(raw)
    assert ch.type == c.REPLY_TYPE_ERROR and ch.flags == c.REPLY_FLAG_DONE
    error, mlen = struct.unpack_from(">IH", ch.payload)
    assert len(ch.payload) == 6 + mlen
    return ch.cookie, error, ch.payload[6:].decode()


def parse_block_status(raw: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """(cookie, context id, [(length, flags)]) of a final BLOCK_STATUS chunk."""
    ch = parse_chunk(raw)
    assert ch.type == c.REPLY_TYPE_BLOCK_STATUS and ch.flags == c.REPLY_FLAG_DONE
    assert (len(ch.payload) - 4) % 8 == 0 and len(ch.payload) >= 12
    (ctx,) = struct.unpack_from(">I", ch.payload)
    descs = [struct.unpack_from(">II", ch.payload, p) for p in range(4, len(ch.payload), 8)]
    return ch.cookie, ctx, descs


# -- driving the machine ------------------------------------------------------------


def events(conn: ServerConnection) -> list:
    """Every event available now (stops at NEED_DATA or after a Disconnect)."""
    out = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if type(ev).__name__ in ("Disconnect", "ExportRequest", "ListRequest", "StartTLS"):
            return out


def started(
    client_flag_bits: int = c.FLAG_C_FIXED_NEWSTYLE | c.FLAG_C_NO_ZEROES,
    max_payload: int = c.MAX_PAYLOAD,
    **limits: Any,
) -> ServerConnection:
    """A machine in OPTIONS: greeting sent, client flags received. `limits`
    go to the constructor (tls=..., max_options=...)."""
    conn = ServerConnection(max_payload=max_payload, **limits)
    conn.start()
    conn.receive_data(client_flags(client_flag_bits))
    assert conn.next_event() is NEED_DATA
    return conn


def in_transmission(
    flags: int = 0,
    structured: bool = False,
    meta: bool = False,
    name: str = "disk",
    size: int = 1 << 30,
    min_block: int = 1,
    max_payload: int = c.MAX_PAYLOAD,
    max_block: int = c.MAX_PAYLOAD,
) -> ServerConnection:
    """A machine in TRANSMISSION after STRUCTURED_REPLY / SET_META_CONTEXT
    (if asked) and a GO accepted with `flags`."""
    conn = started(max_payload=max_payload)
    if structured:
        conn.receive_data(option(c.OPT_STRUCTURED_REPLY))
    if meta:
        conn.receive_data(option(c.OPT_SET_META_CONTEXT, meta_data(name, ("base:allocation",))))
    conn.receive_data(option(c.OPT_GO, go_data(name)))
    (ev,) = events(conn)
    conn.data_to_send()
    conn.accept_export(
        ExportInfo(
            size=size,
            transmission_flags=flags,
            min_block=min_block,
            preferred_block=max(4096, min_block),
            max_block=max_block,
        )
    )
    assert conn.state.name == "TRANSMISSION"
    return conn
