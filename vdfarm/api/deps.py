"""What every route shares: the farm, who the caller is, the role check, the
audit actor.

Rules:
- `get_farm` hands out the one Farm the app was made with (`app.state.farm`).
- Dependencies that never block are `async def`: FastAPI runs a plain `def`
  one in a worker thread, a hop per request for nothing.
- The caller is found and its role checked in `AuthorisedRoute`, BEFORE the
  body is read, so a caller without the right token learns nothing (not
  even that its JSON is bad): 401 with `WWW-Authenticate: Bearer`, or 403
  (a token whose role is too low). The decisions are `auth.identify` and
  `auth.check_role` (pure); the route's role is `roles.needed_role`.
- A token is looked up in the database in a worker thread, never on the
  event loop (the NBD server shares it). The data directory's own token
  (`app.state.api_token`) is matched in memory.
- `bearer_scheme` only documents the scheme in OpenAPI (it never refuses).
- The actor of every change is `token:<name>@<client address>`.
- Long work started through the API runs as a job of `app.state.jobs`
  (this server's `JobBoard`): the route answers 202 and the job at once.
- Import and export go through `app.state.transfers` (the farm's
  TransferService over the app's transfer directory).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from vdfarm.api import auth, roles
from vdfarm.api.schemas import ErrorDetail
from vdfarm.service.context import Farm
from vdfarm.service.jobs import JobBoard
from vdfarm.service.transfer import TransferService

UNKNOWN_CLIENT = "unknown"
API_PREFIX = "/api/v1"
LOCAL_TOKEN_PREFIX = "local:"

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="A token from `vdfarm token add`, or the server's DATA_DIR/api-token. "
    "Needed for every change, and for reads from anywhere but loopback.",
)


async def get_farm(request: Request) -> Farm:
    """The Farm this app serves."""
    return request.app.state.farm


async def get_transfers(request: Request) -> TransferService:
    """Import and export confined to this app's transfer directory."""
    return request.app.state.transfers


def get_jobs(request: Request) -> JobBoard:
    """This server's job board (long work started through the API)."""
    return request.app.state.jobs


def client_host(request: Request) -> str:
    """The peer address of REQUEST (or 'unknown')."""
    return request.client.host if request.client else UNKNOWN_CLIENT


def find_token(request: Request) -> Callable[[str], auth.Principal | None]:
    """The token lookup of REQUEST's app: this server's token file first
    (in memory), then the farm's tokens (the database)."""
    local_token: str = request.app.state.api_token
    farm: Farm = request.app.state.farm

    def find(secret: str) -> auth.Principal | None:
        if auth.token_matches(secret, local_token):
            return auth.Principal(LOCAL_TOKEN_PREFIX + farm.server_name, roles.ADMIN)
        found = farm.tokens.authenticate(secret)
        return None if found is None else auth.Principal(found.name, found.role)

    return find


def identify(request: Request) -> auth.Principal:
    """Who REQUEST is (blocking: may query the database).

    Raises auth.AccessRefused, Unavailable (database down).
    """
    return auth.identify(
        request.method,
        request.client.host if request.client else None,
        request.headers.get("host"),
        request.headers.get("authorization"),
        find_token(request),
    )


def refusal(exc: auth.AccessRefused) -> HTTPException:
    """The HTTP answer of a refused request."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return HTTPException(status_code=exc.status, detail=exc.message, headers=headers)


async def authorise(request: Request, needed: str, what: str) -> auth.Principal:
    """Who REQUEST is, if it may do WHAT (which needs role NEEDED); kept in
    `request.state.principal` for the audit actor.

    Raises HTTPException 401/403, Unavailable (database down).
    """
    try:
        if request.headers.get("authorization") is None:
            principal = identify(request)  # no token: no database, stay on the loop
        else:
            principal = await run_in_threadpool(identify, request)
        auth.check_role(principal, needed, what)
    except auth.AccessRefused as exc:
        raise refusal(exc) from None
    request.state.principal = principal
    return principal


async def get_actor(request: Request) -> str:
    """The audit actor of REQUEST: token:<name>@<client address>."""
    principal = getattr(request.state, "principal", None)
    host = client_host(request)
    return principal.actor(host) if principal is not None else f"api:{host}"


class AuthorisedRoute(APIRoute):
    """An APIRoute that checks the caller and its role before reading the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        method = next(iter(sorted(self.methods or {"GET"})))
        path = self.path_format
        needed = roles.needed_role(method, path, API_PREFIX)
        what = f"{method} {path.removeprefix(API_PREFIX)}"

        async def authorised_handler(request: Request) -> Response:
            await authorise(request, needed, what)
            return await handler(request)

        return authorised_handler


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorDetail, "description": text}
    for status, text in (
        (400, "The service refused the values."),
        (401, "Token missing, malformed, unknown or revoked."),
        (403, "The token's role is too low for this route."),
        (404, "No such thing."),
        (409, "Clashes with the farm's state (exists, in use, locked, raced)."),
        (413, "The request body is over the server's cap."),
        (422, "The request body or query cannot be parsed."),
        (503, "The farm database (or the store) is not reachable."),
    )
}

FarmDep = Annotated[Farm, Depends(get_farm)]
ActorDep = Annotated[str, Depends(get_actor)]
TransfersDep = Annotated[TransferService, Depends(get_transfers)]
JobsDep = Annotated[JobBoard, Depends(get_jobs)]


def make_router(tag: str) -> APIRouter:
    """A router whose routes check the caller first and document the errors."""
    return APIRouter(
        tags=[tag],
        route_class=AuthorisedRoute,
        responses=ERROR_RESPONSES,
        dependencies=[Security(bearer_scheme)],
    )
