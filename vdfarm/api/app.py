"""The FastAPI app of one vdfarm server: `create_app(farm)`.

Rules:
- Every route lives under /api/v1 and comes from `vdfarm.api.routes.*`;
  all but POST /login (devices' agents hold no token) check the token
  (`deps.make_router`). The OpenAPI document is at /openapi.json
  (interactive docs at /docs); they need no token (they hold no farm data).
- The app serves the Farm it is given and never closes it: its owner (the
  `vdfarm server run` process, or a test) does.
- The token is read (or made, mode 0600) from the farm's data directory once,
  when the app is made; a changed file takes effect at the next start.
"""

from __future__ import annotations

from fastapi import FastAPI

import vdfarm
from vdfarm.api import auth
from vdfarm.api.errors import install_error_handlers
from vdfarm.api.routes import (
    audit,
    devices,
    locks,
    login,
    rebalance,
    servers,
    settings,
    stores,
    vdisks,
    versions,
)
from vdfarm.service.context import Farm

API_PREFIX = "/api/v1"

DESCRIPTION = """The REST API of a vdfarm server: the same verbs as the `vdfarm` command line.

Changes need `Authorization: Bearer <token>` (the token is in DATA_DIR/api-token on the
server). Reads need it too, except from loopback. Errors answer `{"detail": "<one line>"}`:
400 refused value, 401 token, 404 unknown, 409 conflict, 422 unparsable request,
503 database unreachable. A request that fails has changed nothing.
"""


def create_app(farm: Farm, *, token: str | None = None) -> FastAPI:
    """The API app serving FARM. TOKEN overrides the data directory's token
    (tests); by default it is read from, or made in, FARM.data_dir/api-token.

    Raises auth.TokenFileError (unusable token file), OSError (cannot write it).
    """
    app = FastAPI(title="vdfarm", version=vdfarm.__version__, description=DESCRIPTION)
    app.state.farm = farm
    app.state.api_token = token if token is not None else auth.ensure_token(farm.data_dir)
    install_error_handlers(app)
    for module in (servers, stores, vdisks, versions, devices, locks, audit, rebalance, settings):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(login.router, prefix=API_PREFIX)  # open to devices: no token
    return app
