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
- Bytes stream from the file (`chunks.read_range`, uncached reads) through
  a thread-backed iterator: never the whole file in memory. One range per
  request: `Range: bytes=A-B` or `bytes=A-` answers 206 with Content-Range;
  no Range answers 200 with the whole file; a range that cannot be
  answered is 416 with `Content-Range: bytes */SIZE`.
- Every block sent is counted per "VDISK/FILE" (`SentBytes`, in memory,
  since the process started) for GET /replication/sent.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vdfarm.api.deps import FarmDep, make_router
from vdfarm.api.ranges import RangeNotSatisfiable, range_answer, refusal_headers
from vdfarm.api.schemas import ErrorDetail
from vdfarm.api.sent_bytes import SentBytes
from vdfarm.store.chunks import ChunkList, read_range

router = make_router("replication")

OCTETS = "application/octet-stream"


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
) -> Response:
    """The bytes of a version file this server holds verified: all of it, or
    the one range the `Range` header asks for."""
    held = farm.replica_source.held_file(vdisk, file_name)
    try:
        answer = range_answer(range_header, held.size)
    except RangeNotSatisfiable as exc:
        return JSONResponse(
            {"detail": str(exc)}, status_code=416, headers=refusal_headers(held.size)
        )
    blocks = sent_bytes(request).counting(
        f"{vdisk}/{file_name}", read_range(held.path, answer.start, answer.end - answer.start)
    )
    return StreamingResponse(
        blocks, status_code=answer.status, media_type=OCTETS, headers=answer.headers
    )


@router.get("/replication/sent", response_model=dict[str, int])
def bytes_sent(request: Request) -> dict[str, int]:
    """Bytes of each version file ("VDISK/FILE") this server sent to peers
    since it started."""
    return sent_bytes(request).snapshot()
