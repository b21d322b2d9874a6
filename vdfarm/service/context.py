"""`Farm`: one server's handle on the farm — data directory, store, database.

Rules:
- Every front end (CLI, REST API, stream server) opens a Farm and calls its
  services; nothing else touches the database or the store.
- The Farm is the front ends' façade and the one place that builds the
  services: each gets only what it needs (a session factory, the clock, the
  audit writer, the store, this server, the few services it calls) through
  its constructor. No module of `vdfarm.service` imports this one.
- `Farm.open` never creates anything: an uninitialised data directory (no
  server.json) or an un-migrated database raises NotInitialised. `Farm.init`
  is the only place that creates directories, migrates and registers.
- `session()` commits on success and rolls back on any error; database
  failures surface as Unavailable / Conflict, never as SQLAlchemy errors
  (`deps.Database`).
- Time comes from `clock` (aware UTC), so tests can move it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from vdfarm.farm import db
from vdfarm.farm.models import Server, utcnow
from vdfarm.service.audit import AuditService, AuditWriter
from vdfarm.service.audit import record as audit_record
from vdfarm.service.boot import BootService
from vdfarm.service.boot_stages import BootStageService
from vdfarm.service.deps import Clock, Database, ThisServer, first_line
from vdfarm.service.devices import DeviceService
from vdfarm.service.errors import Conflict, Invalid, NotInitialised, Unavailable
from vdfarm.service.exports import ExportService
from vdfarm.service.failovers import FailoverService
from vdfarm.service.identity import (
    PRIVATE_DIR_MODE,
    ServerIdentity,
    ensure_registered,
    make_private,
    new_identity,
    read_identity,
    write_identity,
)
from vdfarm.service.ipxe import IpxeService
from vdfarm.service.locks import LockService
from vdfarm.service.login import LoginService
from vdfarm.service.merges import MergeService
from vdfarm.service.moves import MoveService
from vdfarm.service.promotions import PromotionService
from vdfarm.service.repairs import RepairService
from vdfarm.service.replica_source import ReplicaSourceService
from vdfarm.service.replication import ReplicationService
from vdfarm.service.servers import ServerService
from vdfarm.service.sessions import SessionService
from vdfarm.service.settings import SettingsService
from vdfarm.service.tokens import TokenService
from vdfarm.service.transfer import TransferDir, TransferService
from vdfarm.service.vdisks import VdiskService
from vdfarm.service.versions import VersionService
from vdfarm.store.store import Store

DB_FILE = "farm.db"
STORE_DIR = "store"
CACHE_DIR = "cache"


def not_initialised_message(shown: str) -> str:
    return f"data directory {shown} is not initialised; run vdfarm --data-dir {shown} init"


def _shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _resolve_url(data_dir: Path, db_url: str | None, identity: ServerIdentity | None) -> str:
    url = db_url or (identity.db_url if identity else None) or db.sqlite_url(data_dir / DB_FILE)
    try:
        return db.check_url(url)
    except db.BadDatabaseURL as exc:
        raise Invalid(str(exc)) from exc


def _make_engine(url: str) -> Engine:
    try:
        return db.make_engine(url)
    except db.BadDatabaseURL as exc:
        raise Invalid(str(exc)) from exc


class Farm:
    """This server's view of the farm. Use `Farm.open` or `Farm.init`."""

    def __init__(
        self,
        *,
        data_dir: Path,
        db_url: str,
        engine: Engine,
        identity: ServerIdentity,
        server_id: int,
        actor: str,
        clock: Clock,
    ) -> None:
        self.data_dir = data_dir
        self.db_url = db_url
        self.engine = engine
        self.store = Store(data_dir / STORE_DIR)
        self.cache_dir = data_dir / CACHE_DIR
        self.server_uuid = identity.uuid
        self.server_name = identity.name
        self.server_id = server_id
        self.actor = actor
        self.clock = clock
        self.database = Database(engine)
        self._build_services()

    def _build_services(self) -> None:
        """Each service with what it needs, and nothing else."""
        session, clock, store = self.database.session, self.clock, self.store
        here = ThisServer(self.server_id, self.server_name)
        writer = AuditWriter(clock, self.actor)
        self.audit = AuditService(session)
        self.settings = SettingsService(session, writer)
        self.locks = LockService(session, clock, writer, here, self.settings, store)
        self.servers = ServerService(session, clock, writer, here, store, self.settings)
        self.sessions = SessionService(session, clock, writer, here, store)
        self.merges = MergeService(session, clock, writer, store, here)
        self.promotions = PromotionService(session, clock, writer, store, self.merges, here)
        self.versions = VersionService(session, clock, writer, store, self.merges, self.promotions)
        self.repairs = RepairService(session, clock, writer, store, here, self.promotions)
        self.vdisks = VdiskService(session, clock, writer, store)
        self.boot = BootService(session, clock, writer, store)
        self.devices = DeviceService(session, clock, writer)
        self.failovers = FailoverService(session, writer)
        self.exports = ExportService(session, clock, store, here)
        self.logins = LoginService(session, clock, writer, self.settings)
        self.boot_stages = BootStageService(session, clock)
        self.ipxe = IpxeService(session, clock, writer, self.settings, self.logins, self.boot)
        self.moves = MoveService(session, clock, writer, here, self.settings)
        self.tokens = TokenService(session, clock, audit_record)
        self.replica_source = ReplicaSourceService(session, store)
        self.replication = ReplicationService(
            session, clock, writer, self.settings, self.promotions
        )

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        db_url: str | None = None,
        *,
        actor: str = "local",
        clock: Clock = utcnow,
    ) -> Farm:
        """Open an initialised data directory.

        Raises NotInitialised (no server.json, database not migrated or not
        knowing this server), Invalid (bad URL, damaged server.json),
        Unavailable (database unreachable).
        """
        shown = str(data_dir)
        path = Path(data_dir).absolute()
        identity = read_identity(path)
        if identity is None:
            raise NotInitialised(not_initialised_message(shown))
        url = _resolve_url(path, db_url, identity)
        engine = _make_engine(url)
        try:
            server_id = cls._find_server(engine, url, identity, shown)
        except BaseException:
            engine.dispose()
            raise
        return cls(
            data_dir=path,
            db_url=url,
            engine=engine,
            identity=identity,
            server_id=server_id,
            actor=actor,
            clock=clock,
        )

    @staticmethod
    def _find_server(engine: Engine, url: str, identity: ServerIdentity, shown: str) -> int:
        try:
            revision = db.current_revision(engine)
            if revision != db.HEAD_REVISION:
                raise NotInitialised(
                    f"farm database {_shown_url(url)} is at schema {revision or 'none'}, "
                    f"not {db.HEAD_REVISION}; run vdfarm --data-dir {shown} init"
                )
            with Session(engine) as session:
                server_id = session.scalar(select(Server.id).where(Server.uuid == identity.uuid))
        except OperationalError as exc:
            raise Unavailable(
                f"cannot reach the farm database {_shown_url(url)}: {first_line(exc.orig)}"
            ) from exc
        if server_id is None:
            raise NotInitialised(
                f"farm database {_shown_url(url)} does not know server {identity.name}; "
                f"run vdfarm --data-dir {shown} init"
            )
        return server_id

    @classmethod
    def init(
        cls,
        data_dir: str | Path,
        db_url: str | None = None,
        *,
        server_name: str | None = None,
        actor: str = "local",
        clock: Clock = utcnow,
    ) -> Farm:
        """Create (or bring up to date) a data directory: dirs, DB schema,
        this server's identity and rows. Safe to run again.

        Raises Invalid (bad URL or name, unusable directory), Conflict (name
        taken, or directory already initialised under another name),
        Unavailable (database unreachable).
        """
        path = Path(data_dir).absolute()
        existing = read_identity(path)
        if existing and server_name and server_name != existing.name:
            raise Conflict(
                f"data directory {data_dir} is already initialised as server {existing.name}"
            )
        identity = existing or new_identity(server_name, db_url)
        url = _resolve_url(path, db_url, identity)
        cls._make_dirs(path, data_dir)
        try:
            db.upgrade(url)
        except DBAPIError as exc:
            raise Unavailable(
                f"cannot migrate the farm database {_shown_url(url)}: {first_line(exc.orig)}"
            ) from exc
        except OSError as exc:
            raise Invalid(f"cannot make the farm database private: {exc.strerror}") from exc
        cls._register(url, identity, path / STORE_DIR, actor, clock)
        for sub in (STORE_DIR, CACHE_DIR):
            (path / sub).mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        if existing is None or (db_url and db_url != existing.db_url):
            remembered_url = db_url or identity.db_url
            write_identity(path, ServerIdentity(identity.uuid, identity.name, remembered_url))
        make_private(path)
        return cls.open(data_dir, db_url, actor=actor, clock=clock)

    @staticmethod
    def _make_dirs(path: Path, shown: str | Path) -> None:
        try:
            path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise Invalid(f"cannot create data directory {shown}: {exc.strerror}") from exc
        if not path.is_dir():
            raise Invalid(f"data directory {shown} is not a directory")
        make_private(path)  # before the database and server.json are written

    @staticmethod
    def _register(
        url: str, identity: ServerIdentity, store: Path, actor: str, clock: Clock
    ) -> None:
        engine = _make_engine(url)
        try:
            with Session(engine) as session, session.begin():
                ensure_registered(session, identity, store, now=clock(), actor=actor)
        except OperationalError as exc:
            raise Unavailable(f"farm database error: {first_line(exc.orig)}") from exc
        finally:
            engine.dispose()

    def close(self) -> None:
        """Release database connections. The Farm is unusable afterwards."""
        self.engine.dispose()

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transfers(self, transfer_dir: str | Path) -> TransferService:
        """Import and export confined to TRANSFER_DIR (for the REST API),
        audited with each call's actor. Never raises."""
        return TransferService(
            TransferDir(transfer_dir),
            self.database.session,
            AuditWriter(self.clock, self.actor),
            self.vdisks,
            self.versions,
            self.boot,
        )

    # -- plumbing ------------------------------------------------------------

    def now(self) -> datetime:
        """The current time (aware UTC) from this farm's clock."""
        return self.clock()

    def session(self) -> AbstractContextManager[Session]:
        """A database session: commits if the block succeeds, else rolls back.

        Raises Unavailable (database unreachable or busy), Conflict (a
        constraint the caller did not check first), or what the block raises.
        """
        return self.database.session()
