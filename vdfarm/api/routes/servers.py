"""/servers: list the servers of the farm, change a server's placement
settings (like `vdfarm server list` and the service's `configure`).

Rules: paths, bodies and status codes only; `vdfarm server run` starts a
server, never the API.
"""

from __future__ import annotations

from vdfarm.api.deps import ActorDep, FarmDep, make_router
from vdfarm.api.schemas import ServerPatch
from vdfarm.service.servers import ServerInfo

router = make_router("servers")


@router.get("/servers", response_model=list[ServerInfo])
def list_servers(farm: FarmDep) -> list[ServerInfo]:
    """Every server of the farm, by name: up/down, load, placement settings."""
    return farm.servers.list()


@router.patch("/servers/{name}", response_model=ServerInfo)
def change_server(name: str, body: ServerPatch, farm: FarmDep, actor: ActorDep) -> ServerInfo:
    """Change the power rating, subnet or max-booting limit of server NAME."""
    return farm.servers.configure(name, **body.changes(), actor=actor)
