"""The plumbing every service is built from: database sessions, the clock,
this server's identity.

Rules:
- The bottom of `vdfarm.service`: it imports no other service module but
  `errors`, so any service may import it without closing a circle.
- Services receive these through their constructors (or function
  parameters); none reaches for the `Farm` or for another service it was
  not given.
- `Database.session()` commits on success and rolls back on any error;
  database failures surface as Unavailable / Conflict, never as SQLAlchemy
  errors.
- Time comes from a `Clock` (aware UTC), so tests can move it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Engine, Result
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from vdfarm.service.errors import Conflict, Unavailable

Clock = Callable[[], datetime]


class SessionFactory(Protocol):
    """Opens a database session (a transaction) as a context manager:
    committed if the block succeeds, else rolled back.

    Raises Unavailable (database unreachable or busy), Conflict (a
    constraint the caller did not check first), or what the block raises.
    """

    def __call__(self) -> AbstractContextManager[Session]: ...


@dataclass(frozen=True)
class ThisServer:
    """Which server of the farm the calling process is."""

    id: int
    name: str


def first_line(error: object) -> str:
    """The first non-empty line of an error's text."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return error.__class__.__name__


def changed_rows(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE (RESULT of executing it) changed."""
    return cast(CursorResult[Any], result).rowcount


class Database:
    """Sessions on one engine, with the database's errors turned into the
    service layer's. `session` is the `SessionFactory` services are given."""

    def __init__(self, engine: Engine) -> None:
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A database session: commits if the block succeeds, else rolls back.

        Raises Unavailable (database unreachable or busy), Conflict (a
        constraint the caller did not check first), or what the block raises.
        """
        session = self.sessions()
        try:
            yield session
            session.commit()
        except OperationalError as exc:
            _rollback(session)
            raise Unavailable(f"farm database error: {first_line(exc.orig)}") from exc
        except PoolTimeout as exc:
            _rollback(session)
            raise Unavailable("farm database busy: no free connection (try again)") from exc
        except IntegrityError as exc:
            _rollback(session)
            raise Conflict(f"the change conflicts with the farm: {first_line(exc.orig)}") from exc
        except BaseException:
            _rollback(session)
            raise
        finally:
            session.close()


def _rollback(session: Session) -> None:
    with contextlib.suppress(OperationalError):
        session.rollback()
