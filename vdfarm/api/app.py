"""The FastAPI app of one vdfarm server: `create_app(farm)`.

Rules:
- Every route lives under /api/v1 and comes from `vdfarm.api.routes.*`;
  all but POST /login (devices' agents hold no token) check the caller and
  its role (`deps.make_router`, `roles.MINIMAL_ROLE`). The boot path
  (`/boot/files/…`: what a device boots over the network) lives under
  /boot, open to every machine and rate-limited per source. The OpenAPI document
  is at /openapi.json (interactive docs at /docs); they need no token (they
  hold no farm data).
- Version files go to peers only by /replication/files (role `replica`);
  the bytes sent are counted in memory (`app.state.replication_sent`).
- Every request body is capped (`limits.BodyLimit`, 413 past
  `ApiLimits.max_body_bytes`); login and the boot path are rate-limited
  (a bucket each) and login's reservations capped per source address, in
  memory, per server (`ratelimit`).
- The app serves the Farm it is given and never closes it: its owner (the
  `vdfarm server run` process, or a test) does.
- The token is read (or made, mode 0600) from the farm's data directory once,
  when the app is made; a changed file takes effect at the next start.
- Files named by callers (vDisk import and export) are confined to the
  transfer directory (`transfer_dir`, default DATA_DIR/transfer, made 0700
  when the app is made; see `vdfarm.service.transfer`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

import vdfarm
from vdfarm.api import auth
from vdfarm.api.errors import install_error_handlers
from vdfarm.api.limits import ApiLimits, BodyLimit
from vdfarm.api.ratelimit import RateLimiter, ReservationCap
from vdfarm.api.recent_answers import RecentAnswers
from vdfarm.api.routes import (
    audit,
    boot_files,
    boot_ipxe,
    devices,
    jobs,
    locks,
    login,
    rebalance,
    replication,
    replication_files,
    servers,
    settings,
    stores,
    tokens,
    vdisks,
    versions,
)
from vdfarm.api.sent_bytes import SentBytes
from vdfarm.service.context import Farm
from vdfarm.service.jobs import JobBoard
from vdfarm.service.transfer import TRANSFER_DIR, ensure_transfer_dir

API_PREFIX = "/api/v1"

DESCRIPTION = """The REST API of a vdfarm server: the same verbs as the `vdfarm` command line.

Changes need `Authorization: Bearer <token>`: a token from `vdfarm token add` (roles
read, operator, admin) or the server's DATA_DIR/api-token (admin). Reads need it too,
except from loopback with a loopback Host header. Version files (/replication/files)
are for the servers' own `replica` tokens (and admin) only. Errors answer `{"detail": "<one line>"}`:
400 refused value, 401 token, 403 role too low, 404 unknown, 409 conflict, 413 body too
large, 422 unparsable request, 429 too many logins, 503 database unreachable (or too many jobs running).
A merge answers 202 and a job at once; GET /api/v1/jobs/ID follows it. A request
that fails has changed nothing.
"""


def create_app(
    farm: Farm,
    *,
    token: str | None = None,
    limits: ApiLimits | None = None,
    transfer_dir: str | Path | None = None,
) -> FastAPI:
    """The API app serving FARM. TOKEN overrides the data directory's token
    (tests); by default it is read from, or made in, FARM.data_dir/api-token.
    LIMITS: body cap, login rate and reservation cap (defaults: ApiLimits()).
    TRANSFER_DIR: where callers' import and export files are confined
    (default FARM.data_dir/transfer; made 0700 if missing).

    Raises auth.TokenFileError (unusable token file), OSError (cannot write it),
    ValueError (a limit out of range), Invalid (unusable transfer directory).
    """
    limits = limits if limits is not None else ApiLimits()
    app = FastAPI(title="vdfarm", version=vdfarm.__version__, description=DESCRIPTION)
    app.state.farm = farm
    app.state.api_token = token if token is not None else auth.ensure_token(farm.data_dir)
    app.state.limits = limits
    root = transfer_dir if transfer_dir is not None else farm.data_dir / TRANSFER_DIR
    ensure_transfer_dir(root)
    app.state.transfers = farm.transfers(root)
    app.state.replication_sent = SentBytes()
    app.state.jobs = JobBoard(farm.clock)
    app.state.login_limiter = RateLimiter(limits.login_rate_per_s, limits.login_burst)
    app.state.boot_limiter = RateLimiter(limits.boot_rate_per_s, limits.boot_burst)
    app.state.held_boot_files = RecentAnswers()
    app.state.reservation_cap = ReservationCap(
        limits.reservations_per_source, limits.reservation_window_s
    )
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    install_error_handlers(app)
    routers = (
        servers,
        stores,
        vdisks,
        versions,
        devices,
        locks,
        audit,
        rebalance,
        settings,
        tokens,
        replication,
        replication_files,
        jobs,
    )
    for module in routers:
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(login.router, prefix=API_PREFIX)  # open to devices: no token
    app.include_router(boot_files.router)  # /boot: open to booting devices, no token
    app.include_router(boot_ipxe.router)
    return app
