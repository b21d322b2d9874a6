"""Errors as HTTP answers: every failure is `{"detail": "<one line>"}`.

Rules:
- A ServiceError answers with its own `http_status` (NotFound 404, Conflict
  409, Invalid 400, Unavailable/NotInitialised 503) and its one-line message.
  The service has changed nothing when it raises, so neither has the API.
- A request FastAPI cannot parse (malformed JSON, missing or mistyped field,
  unknown field) answers 422 with one line in `detail` and the itemised
  problems in `errors`.
- A database error the service did not translate still means "database
  down": 503, never a traceback.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from vdfarm.service.deps import first_line
from vdfarm.service.errors import ServiceError

VALIDATION_STATUS = 422
UNAVAILABLE_STATUS = 503


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        return f"{parts[0]} field {'.'.join(parts[1:])}"
    return ".".join(parts) or "request"


def problem_line(error: dict[str, Any]) -> str:
    """One line for one pydantic/FastAPI validation problem."""
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "not valid JSON")
        return f"malformed JSON in the request body: {reason}"
    return f"{_where(error.get('loc', ()))}: {error.get('msg', 'invalid')}"


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One line for all of a request's validation problems."""
    if not errors:
        return "invalid request"
    return "invalid request: " + "; ".join(problem_line(e) for e in errors)


async def service_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(status_code=exc.http_status, content={"detail": exc.message})


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    return JSONResponse(
        status_code=VALIDATION_STATUS,
        content={"detail": validation_message(errors), "errors": jsonable_encoder(errors)},
    )


async def database_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    line = first_line(exc.orig) if exc.orig is not None else first_line(exc)
    return JSONResponse(
        status_code=UNAVAILABLE_STATUS, content={"detail": f"farm database error: {line}"}
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make APP answer every expected failure as `{"detail": ...}`."""
    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(DBAPIError, database_error_handler)
