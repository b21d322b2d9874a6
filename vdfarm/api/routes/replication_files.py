"""/replication/files: the version files this server gives its peers (a
file's chunk list, its bytes by Range), and /replication/sent: how many
bytes of each it sent since it started.

Rules:
- Only a `replica` (or `admin`) token may read a file or its chunk list
  (`roles`); only a file held verified here is given
  (`ReplicaSourceService`: 404 otherwise, 400 for a name that is not a
  plain name).
- The chunk list is computed (or read from its cache) on a worker thread:
  the route is a plain `def`, which FastAPI runs in its thread pool.
- Bytes stream from the file (`chunks.read_range`: uncached reads in large
  blocks) read ahead on a thread of the body's own at the copy's lower CPU
  priority (`read_ahead`): never the whole file in memory, and the event
  loop that serves the devices only hands blocks over. One range per
  request: `Range: bytes=A-B` or `bytes=A-` answers 206 with Content-Range;
  no Range answers 200 with the whole file; a range that cannot be
  answered is 416 with `Content-Range: bytes */SIZE`.
- Compression is asked for, never assumed: a range request with
  `X-Vdfarm-Frames: zlib` is answered framed (`wire_frames.pack`: the
  frames that pay packed, the rest as they are; no Content-Length, the
  same header in the answer). Without it, or without a Range, the bytes
  go as they are.
- Every block sent is counted per "VDISK/FILE" (`SentBytes`, in memory,
  since the process started) for GET /replication/sent: the bytes that
  went on the wire, framed or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vdfarm.api.deps import FarmDep, make_router
from vdfarm.api.ranges import RangeNotSatisfiable, content_range, parse_range, unsatisfied_range
from vdfarm.api.read_ahead import read_ahead
from vdfarm.api.schemas import ErrorDetail
from vdfarm.api.sent_bytes import SentBytes
from vdfarm.store.chunks import ChunkList, read_range
from vdfarm.store.wire_frames import pack

router = make_router("replication")

OCTETS = "application/octet-stream"
FRAMES_HEADER = "X-Vdfarm-Frames"
FRAMES_ZLIB = "zlib"


def sent_bytes(request: Request) -> SentBytes:
    """The app's counter of bytes sent to peers."""
    return request.app.state.replication_sent


@router.get(
    "/replication/files/{vdisk}/{file_name}/chunks",
    response_model=ChunkList,
)
def file_chunks(vdisk: str, file_name: str, farm: FarmDep) -> Response:
    """The chunk list of a version file this server holds verified: its
    size, sha256, chunk size and the sha256 of every chunk."""
    found = farm.replica_source.chunk_list(vdisk, file_name)
    return JSONResponse(found.to_dict())


@router.get(
    "/replication/files/{vdisk}/{file_name}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {OCTETS: {}}, "description": "The whole file."},
        206: {"content": {OCTETS: {}}, "description": "The range asked for."},
        416: {"model": ErrorDetail, "description": "A range this server cannot answer."},
    },
)
def file_bytes(
    vdisk: str,
    file_name: str,
    request: Request,
    farm: FarmDep,
    range_header: Annotated[str | None, Header(alias="range")] = None,
    frames_header: Annotated[str | None, Header(alias=FRAMES_HEADER)] = None,
) -> Response:
    """The bytes of a version file this server holds verified: all of it, or
    the one range the `Range` header asks for; framed (the frames that pay
    compressed) if `X-Vdfarm-Frames: zlib` asks for it with a range."""
    held = farm.replica_source.held_file(vdisk, file_name)
    headers = {"Accept-Ranges": "bytes"}
    if range_header is None:
        start, end, status = 0, held.size, 200
    else:
        try:
            start, end = parse_range(range_header, held.size)
        except RangeNotSatisfiable as exc:
            headers["Content-Range"] = unsatisfied_range(held.size)
            return JSONResponse({"detail": str(exc)}, status_code=416, headers=headers)
        status = 206
        headers["Content-Range"] = content_range(start, end, held.size)
    framed = status == 206 and _asks_frames(frames_header)
    path, length = held.path, end - start

    def blocks() -> Iterator[bytes]:
        plain = read_range(path, start, length)
        return _packed(plain) if framed else plain

    if framed:
        headers[FRAMES_HEADER] = FRAMES_ZLIB
    else:
        headers["Content-Length"] = str(length)
    body = sent_bytes(request).counting_async(f"{vdisk}/{file_name}", read_ahead(blocks))
    return StreamingResponse(body, status_code=status, media_type=OCTETS, headers=headers)


def _packed(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """BLOCKS, each packed into frames (BLOCKS closed when this is)."""
    try:
        for block in blocks:
            yield pack(block)
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()


def _asks_frames(value: str | None) -> bool:
    return value is not None and FRAMES_ZLIB in (v.strip().lower() for v in value.split(","))


@router.get("/replication/sent", response_model=dict[str, int])
def bytes_sent(request: Request) -> dict[str, int]:
    """Bytes of each version file ("VDISK/FILE") this server sent to peers
    since it started."""
    return sent_bytes(request).snapshot()
