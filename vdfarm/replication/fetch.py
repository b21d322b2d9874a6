"""Copy one version file from the first peer that gives it whole and right.

Rules:
- What to fetch (`FileWant`: size and sha256) is the farm database's, the
  only thing trusted. A peer's chunk list must name that size and sha256
  ("chunk list differs from the database") before a byte is asked for.
- Bytes go into a `store.receive.Partial` (`.repl-<file>`): the chunks
  already there are re-hashed and the copy resumes at the first missing
  or wrong one; every chunk is checked as it completes; the file gets its
  real name only when its whole sha256 is the database's.
- Peers are tried in the order given. A peer that refuses, sends a wrong
  chunk, a short body, a non-2xx, cannot be reached, or sends nothing for
  READ_TIMEOUT seconds, or trickles (under `pace.MIN_RATE_BPS` over
  `pace.WINDOW_S` seconds spent waiting on it) is dropped for this file
  ("peer NAME: why" in `failures`) and the next one is tried; the
  verified prefix stays. A file
  whose whole hash is wrong (its chunk list lied) is thrown away.
- All-zero chunks are not fetched: the chunk list names them, and they
  stay holes in the received file.
- Chunks the list calls packable (qcow2 tables and the like) are asked for
  framed (`X-Vdfarm-Frames: zlib`), in ranges of their own: the peer packs
  what pays, and `wire_frames.Unframer` unpacks with every size checked
  (a peer whose frames break a rule, a bomb, garbage, is dropped: "sent a
  bad frame"). A peer that answers plain is read plain. Every chunk is
  checked on its unpacked bytes.
- Bytes are asked for in ranges of at most REQUEST_BYTES; the throttle is
  paid for the file bytes received (a framed block's unpacked bytes, not
  its smaller size on the wire: the cap spares the disks at both ends as
  much as the network), the meter counts the bytes on the wire (what the
  sender counts as sent); `may_run()` is
  asked before the copy and between chunks: False raises Paused (the
  partial stays for later).
- A full disk raises StoreFull: checked before the copy (a partial with
  verified bytes stays: it takes no more room) and on every write (then the
  partial is thrown away to give the room back to the devices). Other local failures raise
  StoreError. Memory held: two chunk buffers (one arriving, one being
  checked and written on the pipe's thread: `chunk_pipe`), and for frames
  a receive buffer and one frame. A plain range is received straight into
  the chunk buffer (`range_get`): no copy but the kernel's.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from vdfarm.replication.chunk_pipe import ChunkPipe
from vdfarm.replication.pace import MIN_RATE_BPS, WINDOW_S, Pace
from vdfarm.replication.peer_http import PeerFailed, get_chunk_list, make_client, tls_context
from vdfarm.replication.range_get import RangeAnswer, get_range_into
from vdfarm.replication.rate import RateMeter
from vdfarm.replication.throttle import Throttle
from vdfarm.store.chunks import ChunkList
from vdfarm.store.errors import BadChunk, BadFrame, FileMismatch, StoreFull
from vdfarm.store.receive import Partial
from vdfarm.store.wire_frames import Unframer

REQUEST_BYTES = 512 * 1024 * 1024  # a range request; between two, the pipe drains
READ_TIMEOUT = 10.0
FRAMED_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class FileWant:
    """A file to fetch as the farm database knows it (trusted)."""

    vdisk: str
    file_name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PeerAddress:
    """A server that holds the file: its name and API URL (https://host:port)."""

    name: str
    base_url: str


@dataclass(frozen=True)
class Progress:
    """How far a copy is: bytes of the file here (verified), of all, and the rate now."""

    peer: str
    bytes_done: int
    bytes_total: int
    rate_bps: int


@dataclass(frozen=True)
class FetchOutcome:
    """How a fetch ended: published from PEER, or not (every peer failed:
    FAILURES say why); BYTES_RECEIVED counts the file's bytes off the wire."""

    published: bool
    peer: str | None
    bytes_received: int
    failures: tuple[str, ...]


class Paused(Exception):
    """`may_run()` said no between chunks: the copy stopped, its verified
    prefix stays for the next fetch."""

    def __init__(self, peer: str | None, bytes_received: int, failures: tuple[str, ...]) -> None:
        super().__init__("the copy paused (window closed)")
        self.peer = peer
        self.bytes_received = bytes_received
        self.failures = failures


@dataclass(frozen=True)
class _Run:
    """Chunks FIRST..LAST, all zero (written as holes) or all to fetch
    (FRAMED: asked for in frames)."""

    first: int
    last: int
    zero: bool
    framed: bool = False


def _kind(chunks: ChunkList, index: int) -> tuple[bool, bool]:
    zero = chunks.is_zero(index)
    return zero, not zero and chunks.is_packable(index)


def _runs(chunks: ChunkList, first: int) -> Iterator[_Run]:
    """The chunks from FIRST on, grouped: zero runs, and fetch runs (framed
    or plain) of at most REQUEST_BYTES."""
    index, count = first, len(chunks.chunks)
    per_request = max(1, REQUEST_BYTES // chunks.chunk_size)
    while index < count:
        zero, framed = _kind(chunks, index)
        last = index
        while (
            last + 1 < count
            and _kind(chunks, last + 1) == (zero, framed)
            and (zero or last + 1 - index < per_request)
        ):
            last += 1
        yield _Run(index, last, zero, framed)
        index = last + 1


@dataclass(frozen=True)
class _Wire:
    """How a copy reaches peers: the chunk lists' client, and for ranges
    the token, the TLS context, the read timeout and the pace a peer keeps
    (`pace.Pace`'s rate and window)."""

    client: httpx.Client
    token: str
    context: ssl.SSLContext
    read_timeout: float
    min_peer_rate_bps: float = MIN_RATE_BPS
    pace_window_s: float = WINDOW_S


class _Copy:
    """One fetch_file call: its wire, counters and callbacks."""

    def __init__(
        self,
        want: FileWant,
        vdisk_dir: Path,
        wire: _Wire,
        throttle: Throttle,
        may_run: Callable[[], bool],
        progress: Callable[[Progress], None],
        clock: Callable[[], float],
    ) -> None:
        self.want = want
        self.vdisk_dir = vdisk_dir
        self.client = wire.client
        self.token, self.context, self.read_timeout = wire.token, wire.context, wire.read_timeout
        self.wire = wire
        self.pace = Pace()
        self.throttle = throttle
        self.may_run = may_run
        self.progress = progress
        self.meter = RateMeter(clock)
        self.failures: list[str] = []

    def paused(self, peer: str | None) -> Paused:
        return Paused(peer, self.meter.total, tuple(self.failures))

    def from_peer(self, peer: PeerAddress) -> None:
        """Fetch the whole file from PEER and publish it.

        Raises PeerFailed, Paused, StoreFull, StoreError.
        """
        chunks = get_chunk_list(self.client, peer.base_url, self.want.vdisk, self.want.file_name)
        self.pace = Pace(self.wire.min_peer_rate_bps, self.wire.pace_window_s)
        if chunks.size != self.want.size or chunks.sha256 != self.want.sha256:
            raise PeerFailed("chunk list differs from the database")
        with Partial(self.vdisk_dir, self.want.file_name, chunks) as partial:
            offset = partial.resume_offset()
            try:
                partial.ensure_space(offset)
            except StoreFull:
                if offset == 0:
                    partial.discard()  # nothing worth keeping
                raise
            self._report(peer, offset)
            try:
                self._copy(peer, partial, chunks, offset)
                partial.publish()
            except StoreFull:
                partial.discard()
                raise
            except FileMismatch as exc:
                partial.discard()
                raise PeerFailed(f"{exc} (its chunk list lied)") from exc

    def _copy(self, peer: PeerAddress, partial: Partial, chunks: ChunkList, offset: int) -> None:
        first = offset // chunks.chunk_size if offset < chunks.size else len(chunks.chunks)
        for run in _runs(chunks, first):
            if not self.may_run():
                raise self.paused(peer.name)
            if run.zero:
                for index in range(run.first, run.last + 1):
                    partial.write_zero_chunk(index)
                self._report(peer, sum(chunks.span(run.last)))
            else:
                self._fetch_run(peer, partial, chunks, run)

    def _fetch_run(self, peer: PeerAddress, partial: Partial, chunks: ChunkList, run: _Run) -> None:
        """Fetch the chunks of RUN in one range request; each is checked and
        written (on the pipe's thread) as soon as it is complete."""
        start = chunks.span(run.first)[0]
        end = sum(chunks.span(run.last))
        filler = _Filler(self, peer, chunks, run)
        try:
            with (
                ChunkPipe(partial, chunks.chunk_size, filler.written) as pipe,
                get_range_into(
                    peer.base_url,
                    self.token,
                    self.context,
                    self.read_timeout,
                    self.want.vdisk,
                    self.want.file_name,
                    start,
                    end,
                    chunks.size,
                    frames=run.framed,
                    pace=self.pace,
                ) as body,
            ):
                if body.framed:
                    self._unframe(body, Unframer(end - start), filler, pipe)
                else:
                    while filler.index <= run.last:
                        got = body.read_into(filler.space(pipe))
                        if not got:
                            break
                        self._paid(got)
                        filler.filled_in(pipe, got)
                pipe.settle()
        except BadChunk as exc:
            raise PeerFailed(f"sent a wrong chunk ({exc})") from exc
        except BadFrame as exc:
            raise PeerFailed(f"sent a bad frame ({exc})") from exc
        if filler.index <= run.last:
            got = chunks.span(filler.index)[0] + filler.filled - start
            raise PeerFailed(f"short body: {got} of the {end - start} bytes asked for")

    def _unframe(
        self, body: RangeAnswer, unframer: Unframer, filler: _Filler, pipe: ChunkPipe
    ) -> None:
        block = memoryview(bytearray(FRAMED_BLOCK))
        while True:
            got = body.read_into(block)
            if not got:
                return
            self.meter.add(got)
            for piece in unframer.feed(block[:got]):
                self.throttle.take(len(piece))
                filler.fill(pipe, piece)

    def _paid(self, n: int) -> None:
        """N plain bytes came off the wire: counted, and the cap paid for them."""
        self.meter.add(n)
        self.throttle.take(n)

    def _report(self, peer: PeerAddress, done: int) -> None:
        self.progress(Progress(peer.name, done, self.want.size, self.meter.rate_bps()))


class _Filler:
    """Puts the bytes of one range into chunk buffers and hands each full
    chunk to the pipe; asks `may_run` between chunks."""

    def __init__(self, copy: _Copy, peer: PeerAddress, chunks: ChunkList, run: _Run) -> None:
        self.copy, self.peer, self.chunks, self.run = copy, peer, chunks, run
        self.index, self.filled = run.first, 0

    def written(self, done: int) -> None:
        self.copy._report(self.peer, sum(self.chunks.span(done)))

    def space(self, pipe: ChunkPipe) -> memoryview:
        """Where the next bytes of the range go: the rest of this chunk."""
        return pipe.buffer[self.filled : self.chunks.span(self.index)[1]]

    def filled_in(self, pipe: ChunkPipe, n: int) -> None:
        """N more bytes are in `space`. Raises Paused, and what the pipe raises."""
        self.filled += n
        length = self.chunks.span(self.index)[1]
        if self.filled < length:
            return
        pipe.submit(self.index, length)
        self.index, self.filled = self.index + 1, 0
        if self.index <= self.run.last and not self.copy.may_run():
            pipe.settle()
            raise self.copy.paused(self.peer.name)

    def fill(self, pipe: ChunkPipe, data: bytes | memoryview) -> None:
        """Put DATA (the next bytes of the range) in. Raises PeerFailed
        (more than asked for), Paused, and what the pipe raises."""
        arrived, used = memoryview(data), 0
        while used < len(arrived):
            if self.index > self.run.last:
                raise PeerFailed("sent more than the bytes asked for")
            space = self.space(pipe)
            take = min(len(space), len(arrived) - used)
            space[:take] = arrived[used : used + take]
            used += take
            self.filled_in(pipe, take)


def fetch_file(
    want: FileWant,
    vdisk_dir: Path,
    peers: Sequence[PeerAddress],
    token: str,
    *,
    throttle: Throttle,
    may_run: Callable[[], bool],
    progress: Callable[[Progress], None],
    ca_file: Path | None = None,
    read_timeout: float = READ_TIMEOUT,
    min_peer_rate_bps: float = MIN_RATE_BPS,
    pace_window_s: float = WINDOW_S,
    clock: Callable[[], float] = time.monotonic,
) -> FetchOutcome:
    """Fetch WANT into VDISK_DIR (the vDisk's directory in this store, made
    if missing) from the first of PEERS that gives it whole and right, with
    TOKEN (a `replica` token), THROTTLE on the bytes received, MAY_RUN asked
    between chunks and PROGRESS told after each one; a peer silent for
    READ_TIMEOUT or slower than MIN_PEER_RATE_BPS over PACE_WINDOW_S of
    waiting on it is dropped.

    Raises Paused (MAY_RUN said no), StoreFull (the disk is full), StoreError
    (the store cannot be written; another copy of the file runs), InvalidName,
    OSError/ssl.SSLError (CA_FILE unusable).
    """
    context = tls_context(ca_file)
    with make_client(token, context, read_timeout) as client:
        wire = _Wire(client, token, context, read_timeout, min_peer_rate_bps, pace_window_s)
        copy = _Copy(want, Path(vdisk_dir), wire, throttle, may_run, progress, clock)
        for peer in peers:
            if not may_run():
                raise copy.paused(None)
            try:
                copy.from_peer(peer)
            except PeerFailed as exc:
                copy.failures.append(f"peer {peer.name}: {exc}")
                continue
            return FetchOutcome(True, peer.name, copy.meter.total, tuple(copy.failures))
        return FetchOutcome(False, None, copy.meter.total, tuple(copy.failures))
