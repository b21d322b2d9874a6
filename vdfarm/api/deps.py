"""What every route shares: the farm, the audit actor, the token check.

Rules:
- `get_farm` hands out the one Farm the app was made with (`app.state.farm`).
- The token check runs in `AuthorisedRoute`, BEFORE the body is read, so a
  caller without the token learns nothing (not even that its JSON is bad):
  401 with `WWW-Authenticate: Bearer`. The decision itself is
  `auth.access_refusal` (pure).
- `bearer_scheme` only documents the scheme in OpenAPI (it never refuses).
- The actor of every change is `api:<client address>`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from vdfarm.api import auth
from vdfarm.api.schemas import ErrorDetail
from vdfarm.service.context import Farm

UNKNOWN_CLIENT = "unknown"

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="The token in DATA_DIR/api-token. Needed for every change, and for reads "
    "from anywhere but loopback.",
)


def get_farm(request: Request) -> Farm:
    """The Farm this app serves."""
    return request.app.state.farm


def client_host(request: Request) -> str:
    """The peer address of REQUEST (or 'unknown')."""
    return request.client.host if request.client else UNKNOWN_CLIENT


def get_actor(request: Request) -> str:
    """The audit actor of REQUEST: api:<client address>."""
    return f"api:{client_host(request)}"


def authorise(request: Request) -> None:
    """Let REQUEST through or refuse it.

    Raises HTTPException 401 (token missing where needed, malformed or wrong).
    """
    refusal = auth.access_refusal(
        request.method,
        request.client.host if request.client else None,
        request.headers.get("authorization"),
        request.app.state.api_token,
    )
    if refusal is not None:
        raise HTTPException(status_code=401, detail=refusal, headers={"WWW-Authenticate": "Bearer"})


class AuthorisedRoute(APIRoute):
    """An APIRoute that checks the token before reading the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authorised_handler(request: Request) -> Response:
            authorise(request)
            return await handler(request)

        return authorised_handler


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorDetail, "description": text}
    for status, text in (
        (400, "The service refused the values."),
        (401, "Token missing, malformed or wrong."),
        (404, "No such thing."),
        (409, "Clashes with the farm's state (exists, in use, locked, raced)."),
        (422, "The request body or query cannot be parsed."),
        (503, "The farm database (or the store) is not reachable."),
    )
}

FarmDep = Annotated[Farm, Depends(get_farm)]
ActorDep = Annotated[str, Depends(get_actor)]


def make_router(tag: str) -> APIRouter:
    """A router whose routes check the token first and document the errors."""
    return APIRouter(
        tags=[tag],
        route_class=AuthorisedRoute,
        responses=ERROR_RESPONSES,
        dependencies=[Security(bearer_scheme)],
    )
