"""A writer for crash tests: batches of writes, write-zeroes and FUA writes
over a raw NBD client, each batch followed by a FLUSH, recording which
writes an answered FLUSH (or FUA) made durable, so a test can kill the
server at any moment and check every durable sector afterwards."""

from __future__ import annotations

import random
import struct
import threading

from tests.stream import rawclient as rc

M = 1024 * 1024

SECTOR = 512
REGION = 24 * M  # writes land in [0, REGION): over base data and holes
ZEROED = -1


def sector_bytes(seq: int, sector: int) -> bytes:
    """The content write SEQ puts in SECTOR (unique per write and sector)."""
    if seq == ZEROED:
        return bytes(SECTOR)
    return struct.pack(">4sIQ", b"VDFW", seq, sector) * (SECTOR // 16)


class DurableWrites:
    """What every sector may hold after a crash: the last write made durable
    (by an answered FLUSH, or an answered FUA write), or any write sent after it."""

    def __init__(self) -> None:
        self.durable: dict[int, int] = {}
        self.pending: dict[int, list[int]] = {}

    def sent(self, seq: int, first: int, count: int) -> None:
        for sector in range(first, first + count):
            self.pending.setdefault(sector, []).append(seq)

    def flushed(self) -> None:
        """A FLUSH was answered: everything sent before it is durable."""
        for sector, seqs in self.pending.items():
            self.durable[sector] = seqs[-1]
        self.pending.clear()

    def fua_answered(self, seq: int, first: int, count: int) -> None:
        """A FUA write was answered: its own sectors are durable."""
        for sector in range(first, first + count):
            self.durable[sector] = seq
            self.pending[sector].remove(seq)
            if not self.pending[sector]:
                del self.pending[sector]

    def violations(self, data: bytes, original: bytes) -> list[str]:
        """The sectors whose content in DATA (the region as read back) is not allowed."""
        bad = []
        touched = sorted(set(self.durable) | set(self.pending))
        for sector in touched:
            got = data[sector * SECTOR : (sector + 1) * SECTOR]
            allowed = {sector_bytes(s, sector) for s in self.pending.get(sector, ())}
            if sector in self.durable:
                allowed.add(sector_bytes(self.durable[sector], sector))
            else:
                allowed.add(original[sector * SECTOR : (sector + 1) * SECTOR])
            if got not in allowed:
                bad.append(
                    f"sector {sector} (durable: {self.durable.get(sector)}, "
                    f"pending: {self.pending.get(sector)}) holds {got[:16]!r}"
                )
        return bad


class CrashWriter(threading.Thread):
    """Batches of non-overlapping writes (some FUA, some WRITE_ZEROES) sent
    at once, then a FLUSH; records what each answer made durable; runs
    until the server vanishes."""

    def __init__(self, port: int, export: str) -> None:
        super().__init__(daemon=True)
        self.client = rc.RawClient(port)
        self.client.connect(export)
        self.model, self.rounds, self.ended_by = DurableWrites(), 0, None
        self.rng, self.seq = random.Random(1), 0

    def batch(self) -> list[tuple[int, int, int, int, int]]:
        """(command, flags, first sector, sectors, seq) of 16 non-overlapping writes."""
        taken: list[tuple[int, int]] = []
        while len(taken) < 16:
            count = self.rng.choice((1, 8, 64, 128, 256, 300))
            first = self.rng.randrange(0, REGION // SECTOR - count)
            if all(first + count <= a or b <= first for a, b in taken):
                taken.append((first, first + count))
        out = []
        for first, end in taken:
            self.seq += 1
            zeroes = self.rng.random() < 0.15
            flags = rc.FLAG_FUA if self.rng.random() < 0.15 else 0
            out.append(
                (
                    rc.CMD_WRITE_ZEROES if zeroes else rc.CMD_WRITE,
                    flags,
                    first,
                    end - first,
                    ZEROED if zeroes else self.seq,
                )
            )
        return out

    def send(self, command: int, flags: int, first: int, count: int, seq: int) -> int:
        payload = (
            b""
            if seq == ZEROED
            else b"".join(sector_bytes(seq, s) for s in range(first, first + count))
        )
        self.model.sent(seq, first, count)
        return self.client.request(command, first * SECTOR, count * SECTOR, flags, payload)

    def run(self) -> None:
        try:
            while True:
                sent = {}
                for write in self.batch():
                    sent[self.send(*write)] = write
                for _ in sent:
                    error, cookie, _ = self.client.reply()
                    assert error == 0, error
                    _, flags, first, count, seq = sent[cookie]
                    if flags & rc.FLAG_FUA:
                        self.model.fua_answered(seq, first, count)
                self.client.request(rc.CMD_FLUSH, 0, 0)
                assert self.client.reply()[0] == 0
                self.model.flushed()
                self.rounds += 1
        except (OSError, EOFError) as exc:
            self.ended_by = exc
