"""/boot/ipxe?mac=…: the iPXE script of a booting device (the URL DHCP
hands to iPXE clients: `http://SERVER:PORT/boot/ipxe?mac=${net0/mac}`).

Rules:
- Open to every machine: no token (a booting device has none). Limited
  per source address before anything is read, in the boot path's bucket
  (`BootRoute`, as /boot/files), and by the reservation cap per source of
  `POST /login` (one source reserves for at most
  `ApiLimits.reservations_per_source` devices within the window).
- Every decision is `IpxeService.script`'s (`farm.ipxe`). The answer is
  200 text/plain, an iPXE script: the boot script, or one that echoes
  why not and tries again (an unknown MAC, no vDisk, no server, no boot
  files...). A missing or malformed `mac`, or a Host header no URL can be
  made of, is 400 with one line (iPXE shows the failure); 503 when the
  database is away.
- The script's URLs start with the scheme and Host the client used: the
  server it reached is the server that serves its boot files.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from vdfarm.api.deps import UNKNOWN_CLIENT, FarmDep, client_host
from vdfarm.api.limited_route import BootRoute
from vdfarm.api.ratelimit import ReservationCap, source_key
from vdfarm.api.schemas import ErrorDetail
from vdfarm.service.ipxe import MAX_MAC_TEXT, check_base_url, check_mac
from vdfarm.service.ipxe_script import retry_script

router = APIRouter(prefix="/boot", tags=["boot"], route_class=BootRoute)

SCRIPT = "text/plain"


def _base_url(request: Request) -> str:
    host = request.headers.get("host") or request.url.netloc
    return f"{request.url.scheme}://{host}"


@router.get(
    "/ipxe",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {SCRIPT: {}}, "description": "An iPXE script (boot, or why not)."},
        400: {"model": ErrorDetail, "description": "No MAC, or a malformed one."},
        429: {"model": ErrorDetail, "description": "Too many requests from this address."},
        503: {"model": ErrorDetail, "description": "The farm database is away."},
    },
)
def ipxe_script(
    request: Request,
    farm: FarmDep,
    mac: Annotated[str | None, Query(max_length=MAX_MAC_TEXT)] = None,
) -> Response:
    """The iPXE script of the device whose MAC is `mac`: log it in and boot
    the version it boots from the server login chose."""
    base = check_base_url(_base_url(request))
    normalised = check_mac(mac)
    client = client_host(request)
    cap: ReservationCap | None = getattr(request.app.state, "reservation_cap", None)
    if cap is not None and not cap.allow(source_key(client), normalised):
        script = retry_script(
            f"too many devices booting from {source_key(client)} at once",
            f"{base}/boot/ipxe?mac={normalised}",
        )
        return PlainTextResponse(script, media_type=SCRIPT)
    answer = farm.ipxe.script(base, normalised, None if client == UNKNOWN_CLIENT else client)
    return PlainTextResponse(answer.script, media_type=SCRIPT)
