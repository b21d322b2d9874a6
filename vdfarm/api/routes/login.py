"""POST /login: which server a device should stream from (the agent's first call).

Rules:
- Open to every device: no token (a device's agent holds none, and login
  changes nothing but a short reservation of the server it chose;
  `"reserve": false` asks without one). The app mounts this router under /api/v1.
- `client_ip` in the body wins; otherwise the peer address is used when it is
  an IP address (it decides subnet affinity).
- Answers 200 {device, vdisk, version, server, alternatives, reason}; errors
  are {"detail": "<one line>"}: 404 unknown device, 400 no vDisk assigned or
  bad address, 503 nothing can serve it (no server up, version held by no up
  server, ...), 422 unparsable body.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from vdfarm.api.deps import get_farm
from vdfarm.service.context import Farm
from vdfarm.service.errors import ServiceError
from vdfarm.service.login import LoginResult, ServerEndpoint

router = APIRouter(tags=["login"])


class LoginRequest(BaseModel):
    """Who is logging in: a device name or MAC, and optionally its address."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(min_length=1, max_length=255, description="Device name or MAC.")
    client_ip: str | None = Field(
        default=None, description="The device's IP address (default: the caller's)."
    )
    reserve: bool = Field(
        default=True,
        description="Count the device on the chosen server until it "
        "connects (false: only ask, as an admin).",
    )


class ServerOut(BaseModel):
    """Where a device reaches a server."""

    name: str
    host: str
    nbd_port: int | None
    api_port: int | None


class LoginResponse(BaseModel):
    """The server to stream from, then the alternatives, best first."""

    device: str
    vdisk: str
    version: int
    server: ServerOut
    alternatives: list[ServerOut]
    reason: str


class LoginError(BaseModel):
    detail: str


def _server_out(endpoint: ServerEndpoint) -> ServerOut:
    return ServerOut(
        name=endpoint.name,
        host=endpoint.host,
        nbd_port=endpoint.nbd_port,
        api_port=endpoint.api_port,
    )


def _response(result: LoginResult) -> LoginResponse:
    return LoginResponse(
        device=result.device,
        vdisk=result.vdisk,
        version=result.version,
        server=_server_out(result.server),
        alternatives=[_server_out(e) for e in result.alternatives],
        reason=result.reason,
    )


def _peer_address(request: Request) -> str | None:
    host = request.client.host if request.client else None
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


@router.post(
    "/login",
    response_model=LoginResponse,
    responses={status: {"model": LoginError} for status in (400, 404, 503)},
)
def login_device(
    body: LoginRequest, request: Request, farm: Annotated[Farm, Depends(get_farm)]
) -> LoginResponse:
    """The server the device should stream from, and the ordered alternatives."""
    client_ip = body.client_ip if body.client_ip is not None else _peer_address(request)
    try:
        return _response(farm.logins.login(body.device, client_ip, reserve=body.reserve))
    except ServiceError as exc:
        raise HTTPException(status_code=exc.http_status, detail=exc.message) from exc
