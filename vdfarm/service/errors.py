"""Errors of the service layer: what every front end shows to a person.

Rules: each error carries ONE human line (`str(err)`), no traceback needed to
understand it. Front ends map the kinds: NotFound → 404, Conflict → 409,
Invalid → 400, Unavailable → 503 (CLI: exit 1 with `vdfarm: error: <line>`).
A service call that raises has changed nothing.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error a service call reports to its caller."""

    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    """The named thing does not exist."""

    http_status = 404


class Conflict(ServiceError):
    """The request clashes with the farm's current state (exists, in use, locked)."""

    http_status = 409


class Invalid(ServiceError):
    """The request itself is malformed (bad name, bad value, bad source)."""

    http_status = 400


class Unavailable(ServiceError):
    """Something needed is not reachable or not here (database, store file)."""

    http_status = 503


class NotInStore(Unavailable):
    """A file the answer needs is not in this server's store as the farm
    sealed it (missing, or another copy): nothing older stands in for it."""


class NotInitialised(ServiceError):
    """The data directory (or its database) has not been set up by `init`."""

    http_status = 503
