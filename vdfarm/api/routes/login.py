"""POST /login: which server a device should stream from (the agent's first call).

Rules:
- Open to every device: no token (a device's agent holds none, and login
  changes nothing but a short reservation of the server it chose;
  `"reserve": false` asks without one). The app mounts this router under /api/v1.
- Rate-limited per source (an IPv4 address or an IPv6 /64; a token bucket,
  `ApiLimits.login_rate_per_s` and `login_burst`), checked before the body
  is read: 429 with Retry-After.
  The body is capped like every other (`limits.BodyLimit`).
- A token is optional; one that is given must be right (401). `client_ip` in
  the body is believed only from a token of role operator or admin (an agent
  or a trusted relay); otherwise the TCP peer's address is used (it decides
  subnet affinity).
- Without such a token, one source address may hold reservations for at
  most `ApiLimits.reservations_per_source` devices within the reservation
  window (counted in memory on this server): 429 past it; `reserve: false`
  still answers.
- `exclude` (at most 16 server names) lists servers placement must skip:
  an agent failing over away from a dead or hung server.
- Answers 200 {device, vdisk, version, server, alternatives, reason, sha256,
  size, write_cache_type, failover}; errors are {"detail": "<one line>"}:
  404 unknown device, 400 no vDisk assigned, bad address or bad server
  name in exclude, 401 wrong token, 429 too many, 503 nothing can serve it
  (no server up, version held by no up server or only by excluded ones,
  ...), 422 unparsable body (or more than 16 names in exclude).
"""

from __future__ import annotations

import ipaddress
import math
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from vdfarm.api import auth, roles
from vdfarm.api.deps import client_host, find_token, get_farm, refusal
from vdfarm.api.limited_route import RateLimitedRoute
from vdfarm.api.limits import ApiLimits
from vdfarm.api.ratelimit import ReservationCap, source_key
from vdfarm.service.context import Farm
from vdfarm.service.errors import ServiceError
from vdfarm.service.login import MAX_EXCLUDED, LoginResult, ServerEndpoint
from vdfarm.service.tokens import role_allows

router = APIRouter(tags=["login"], route_class=RateLimitedRoute)


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
    exclude: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDED,
        description="Servers not to send the device to (an agent failing over "
        "away from a dead or hung server).",
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
    sha256: str | None = Field(
        description="The booted version's sha256 (null while it is written or "
        "open for maintenance: no fixed hash)."
    )
    size: int = Field(description="The vDisk's virtual size in bytes.")
    write_cache_type: str = Field(description="The vDisk's write cache type.")
    failover: bool = Field(
        description="True if any server holding a verified copy may serve the "
        "device (standard mode, not maintenance, a write cache on the device)."
    )


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
        sha256=result.sha256,
        size=result.size,
        write_cache_type=result.write_cache_type,
        failover=result.failover,
    )


def _peer_address(request: Request) -> str | None:
    host = request.client.host if request.client else None
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


def _trusted_caller(request: Request) -> bool:
    """True if REQUEST carries a token of role operator or admin.

    Raises HTTPException 401 (a wrong or malformed token), Unavailable.
    """
    authorization = request.headers.get("authorization")
    if authorization is None:
        return False
    given = auth.bearer_token(authorization)
    if given is None:
        raise refusal(auth.AccessRefused(401, "malformed Authorization header"))
    principal = find_token(request)(given)
    if principal is None:
        raise refusal(auth.AccessRefused(401, "wrong API token"))
    return role_allows(principal.role, roles.LOGIN_TRUSTED_ROLE)


def _count_reservation(request: Request, device: str) -> None:
    """Count a reservation of DEVICE by REQUEST's source address.

    Raises HTTPException 429 (the source holds its share already).
    """
    cap: ReservationCap | None = getattr(request.app.state, "reservation_cap", None)
    source = source_key(client_host(request))
    if cap is not None and not cap.allow(source, device.strip().lower()):
        limits: ApiLimits = request.app.state.limits
        raise HTTPException(
            status_code=429,
            detail=f"too many reservations from {source}: at most {cap.limit} devices "
            f"within {limits.reservation_window_s:g} s without a token; "
            "ask with reserve=false, or log in through a relay with an operator token",
            headers={"Retry-After": str(math.ceil(limits.reservation_window_s))},
        )


@router.post(
    "/login",
    response_model=LoginResponse,
    responses={status: {"model": LoginError} for status in (400, 401, 404, 413, 429, 503)},
)
def login_device(
    body: LoginRequest, request: Request, farm: Annotated[Farm, Depends(get_farm)]
) -> LoginResponse:
    """The server the device should stream from, and the ordered alternatives."""
    trusted = _trusted_caller(request)
    client_ip = body.client_ip if trusted else None
    if client_ip is None:
        client_ip = _peer_address(request)
    if body.reserve and not trusted:
        _count_reservation(request, body.device)
    try:
        result = farm.logins.login(
            body.device, client_ip, reserve=body.reserve, exclude=body.exclude
        )
        return _response(result)
    except ServiceError as exc:
        raise HTTPException(status_code=exc.http_status, detail=exc.message) from exc
