"""/boot/files/{vdisk}/{version}/{kind}: the kernel or initramfs a version
boots, for iPXE (or any HTTP client) on the boot network.

Rules:
- Open to every machine: no token (a booting device holds none; these are
  the files PXE serves over TFTP anyway, so an initramfs or a command line
  must never hold a secret). Rate-limited per source address before
  anything is read (`BootRoute`: `ApiLimits.boot_rate_per_s`, `boot_burst`).
- Mounted at /boot, outside /api/v1: it is the URL a boot script names.
- Only a file this server holds as the farm database recorded it
  (`BootService.held`); anything else is 404 with one line. `?sha256=`
  asks for that very file: once the version boots another, 404, so a
  device never boots one kernel with another kernel's initramfs.
- One range per request, as for replication (`ranges`): 206 with
  Content-Range; no Range, 200 with the whole file; a range that cannot be
  answered, 416 with `Content-Range: bytes */SIZE`.
- `?mac=` (the iPXE script's URLs name the device's MAC) ties the request
  to a booting device: a file that will be answered records that device's
  `kernel` boot stage if it counts (`BootStageService.kernel_fetched`: the
  device boots this vDisk and fetched its script from this very address);
  recording never fails or changes the answer.
- The database's answer for a file (`held`) is kept for a second
  (`RecentAnswers`, per server): a boot storm asks it hundreds of times,
  and a request that finds it kept makes no database query and no hop to
  a worker thread (the route is async; a look-up or a stage record runs
  in the thread pool). So a version whose boot files change may serve the
  old ones for up to a second more.
- The file is opened (no link followed) and checked (a regular file of the
  recorded size) before the answer starts; its bytes go out through the
  page cache (devices booting together read the same file: it should stay
  hot): with sendfile(2) where the server can, else in blocks read on a
  worker thread, never the whole file in memory (`FileRangeResponse`).
"""

from __future__ import annotations

import os
import stat
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from vdfarm.api.deps import FarmDep, client_host
from vdfarm.api.file_response import FileRangeResponse
from vdfarm.api.limited_route import BootRoute
from vdfarm.api.ranges import RangeNotSatisfiable, range_answer, refusal_headers
from vdfarm.api.recent_answers import RecentAnswers
from vdfarm.api.schemas import ErrorDetail
from vdfarm.service.boot import HeldBootFile
from vdfarm.service.context import Farm
from vdfarm.service.errors import NotFound

router = APIRouter(prefix="/boot", tags=["boot"], route_class=BootRoute)

OCTETS = "application/octet-stream"


@router.get(
    "/files/{vdisk}/{version}/{kind}",
    response_class=FileRangeResponse,
    responses={
        200: {"content": {OCTETS: {}}, "description": "The whole file."},
        206: {"content": {OCTETS: {}}, "description": "The range asked for."},
        404: {"model": ErrorDetail, "description": "This server holds no such file."},
        416: {"model": ErrorDetail, "description": "A range this server cannot answer."},
        429: {"model": ErrorDetail, "description": "Too many requests from this address."},
    },
)
async def boot_file(
    vdisk: str,
    version: int,
    kind: str,
    farm: FarmDep,
    request: Request,
    sha256: Annotated[str | None, Query(max_length=64)] = None,
    mac: Annotated[str | None, Query(max_length=64)] = None,
    range_header: Annotated[str | None, Header(alias="range")] = None,
) -> Response:
    """The kernel (`kind` kernel) or initramfs (initrd) of a version of a
    vDisk: all of it, or the one range `Range` asks for."""
    held = await _held(request, farm, vdisk, version, kind, sha256)
    try:
        fd = os.open(held.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise NotFound(
            f"this server holds no {kind} of version {version} of vDisk {vdisk}"
        ) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != held.size:
        os.close(fd)
        raise NotFound(f"this server holds no {kind} of version {version} of vDisk {vdisk}")
    try:
        answer = range_answer(range_header, held.size)
    except RangeNotSatisfiable as exc:
        os.close(fd)
        return JSONResponse(
            {"detail": str(exc)}, status_code=416, headers=refusal_headers(held.size)
        )
    if mac is not None:
        await run_in_threadpool(farm.boot_stages.kernel_fetched, mac, vdisk, client_host(request))
    return FileRangeResponse(
        open(fd, "rb", buffering=0),  # closes FD with the answer
        answer.start,
        answer.end,
        answer.status,
        {**answer.headers, "ETag": f'"{held.sha256}"'},
        OCTETS,
    )


async def _held(
    request: Request, farm: Farm, vdisk: str, version: int, kind: str, sha256: str | None
) -> HeldBootFile:
    """`farm.boot.held`, or its answer of less than a second ago.

    Raises NotFound, Unavailable.
    """
    recent: RecentAnswers[HeldBootFile] = request.app.state.held_boot_files
    key = (vdisk, version, kind, sha256)
    held = recent.get(key)
    if held is None:
        held = await run_in_threadpool(farm.boot.held, vdisk, version, kind, sha256)
        recent.put(key, held)
    return held
