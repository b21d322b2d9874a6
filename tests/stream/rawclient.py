"""A deliberately dumb NBD client over a blocking socket, written from the
spec independently of vdfarm.nbd, so tests can send bytes no real client
would (bad magic, huge options, overflowing offsets...).
"""

from __future__ import annotations

import socket
import struct

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_EXTENDED_HEADERS = 8, 11
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP = 0x80000001
REP_ERR_POLICY = 0x80000002
REP_ERR_INVALID = 0x80000003
REP_ERR_UNKNOWN = 0x80000006

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 5, 6, 7
FLAG_FUA = 1

EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP = 1, 5, 22, 28, 75, 95


class RawClient:
    def __init__(
        self, port: int, timeout: float = 10.0, host: str = "127.0.0.1", source: str | None = None
    ) -> None:
        """SOURCE: the local address to connect from (e.g. 127.0.0.2: a second
        client address on loopback)."""
        bind = (source, 0) if source is not None else None
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=bind)
        self.cookie = 0

    def close(self) -> None:
        self.sock.close()

    # -- bytes -------------------------------------------------------------
    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"server closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def is_closed_by_server(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (EOF or reset)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    # -- handshake ---------------------------------------------------------
    def greeting(self) -> int:
        magic, opt, flags = struct.unpack(">QQH", self.recv_exact(18))
        assert magic == NBDMAGIC and opt == IHAVEOPT
        return flags

    def send_client_flags(self, flags: int = 3) -> None:
        self.sock.sendall(struct.pack(">I", flags))

    def send_option(
        self, option: int, data: bytes = b"", magic: int = IHAVEOPT, length: int | None = None
    ) -> None:
        n = len(data) if length is None else length
        self.sock.sendall(struct.pack(">QII", magic, option, n) + data)

    def option_reply(self) -> tuple[int, int, bytes]:
        magic, option, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        assert magic == OPT_REPLY_MAGIC, hex(magic)
        return option, rtype, self.recv_exact(length)

    def go(self, name: str, structured: bool = False) -> tuple[int, int]:
        """GO to `name`; return (size, transmission flags). Raises on error."""
        if structured:
            self.send_option(OPT_STRUCTURED_REPLY)
            assert self.option_reply()[1] == REP_ACK
        raw = name.encode()
        self.send_option(OPT_GO, struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0))
        size = flags = None
        while True:
            _, rtype, data = self.option_reply()
            if rtype == REP_ACK:
                return size, flags
            if rtype == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
                size, flags = struct.unpack(">QH", data[2:12])
            elif rtype & 0x80000000:
                raise NBDOptionError(rtype, data.decode(errors="replace"))

    def description(self, name: str) -> str | None:
        """NBD_OPT_INFO on `name` asking for NBD_INFO_DESCRIPTION; the
        description the server gave (None: none). Raises on error."""
        raw = name.encode()
        info_description = 2
        payload = struct.pack(">I", len(raw)) + raw + struct.pack(">HH", 1, info_description)
        self.send_option(OPT_INFO, payload)
        found = None
        while True:
            _, rtype, data = self.option_reply()
            if rtype == REP_ACK:
                return found
            if rtype == REP_INFO and struct.unpack(">H", data[:2])[0] == info_description:
                found = data[2:].decode()
            elif rtype & 0x80000000:
                raise NBDOptionError(rtype, data.decode(errors="replace"))

    def connect(self, name: str, structured: bool = False) -> tuple[int, int]:
        self.greeting()
        self.send_client_flags()
        return self.go(name, structured)

    # -- transmission (simple replies) --------------------------------------
    def request(self, cmd: int, offset: int, length: int, flags: int = 0, data: bytes = b"") -> int:
        self.cookie += 1
        self.sock.sendall(
            struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, self.cookie, offset, length) + data
        )
        return self.cookie

    def reply(self, read_length: int = 0) -> tuple[int, int, bytes]:
        """(error, cookie, data) of a simple reply."""
        magic, error, cookie = struct.unpack(">IIQ", self.recv_exact(16))
        assert magic == SIMPLE_MAGIC, hex(magic)
        data = self.recv_exact(read_length) if error == 0 and read_length else b""
        return error, cookie, data

    def call(
        self, cmd: int, offset: int, length: int, flags: int = 0, data: bytes = b""
    ) -> tuple[int, bytes]:
        cookie = self.request(cmd, offset, length, flags, data)
        error, got, payload = self.reply(length if cmd == CMD_READ else 0)
        assert got == cookie
        return error, payload


class NBDOptionError(Exception):
    def __init__(self, rtype: int, message: str) -> None:
        super().__init__(f"option error {rtype:#x}: {message}")
        self.rtype = rtype
        self.message = message
