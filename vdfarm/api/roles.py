"""Who may call what: the one table of route → the least role it needs.

Rules:
- Roles rank read < operator < admin (`vdfarm.service.tokens.role_allows`);
  `replica` stands outside that ranking: the token a server makes for itself
  to fetch version files from its peers may call the replication file
  routes (a file's chunk list and bytes) and nothing else; `admin` may call
  them too, `read` and `operator` may not (they never download a vDisk).
  `read` may GET everything else (but the token list); `operator` runs devices
  and their sessions (add, change, assign, delete a device; report a
  device's failover, as its agent does; release a lock;
  rebalance; verify a copy; log a device in for another address); `admin`
  does everything else: vDisks (import, change, delete, export, repair,
  boot files), versions (open, promote, revert, override, merge, delete),
  servers, store sets, replication start, farm settings, lock homes and
  tokens.
- A route is named by its method and its path under /api/v1 as FastAPI
  spells it. A route missing from the table needs `admin` (fail closed); a
  test checks every route of the app is in it. The routes open to devices
  (POST /login, and /boot/… outside /api/v1) are not in it.
- Pure data and one lookup: no FastAPI, no database.
"""

from __future__ import annotations

READ, OPERATOR, ADMIN, REPLICA = "read", "operator", "admin", "replica"

MINIMAL_ROLE: dict[tuple[str, str], str] = {
    # reads
    ("GET", "/audit"): READ,
    ("GET", "/jobs"): READ,
    ("GET", "/jobs/{job_id}"): READ,
    ("GET", "/devices"): READ,
    ("GET", "/devices/{name}"): READ,
    ("GET", "/locks"): READ,
    ("GET", "/servers"): READ,
    ("GET", "/replication"): READ,
    ("GET", "/settings"): READ,
    ("GET", "/store-sets"): READ,
    ("GET", "/stores"): READ,
    ("GET", "/vdisks"): READ,
    ("GET", "/vdisks/{name}"): READ,
    ("GET", "/vdisks/{name}/versions"): READ,
    ("GET", "/vdisks/{name}/versions/{number}"): READ,
    ("GET", "/replication/sent"): READ,
    # version files, between servers
    ("GET", "/replication/files/{vdisk}/{file_name}/chunks"): REPLICA,
    ("GET", "/replication/files/{vdisk}/{file_name}"): REPLICA,
    # devices and their sessions
    ("POST", "/devices"): OPERATOR,
    ("PATCH", "/devices/{name}"): OPERATOR,
    ("DELETE", "/devices/{name}"): OPERATOR,
    ("POST", "/devices/{name}/failover"): OPERATOR,
    ("POST", "/locks/{vdisk}/release"): OPERATOR,
    ("POST", "/rebalance"): OPERATOR,
    ("POST", "/vdisks/{name}/verify"): OPERATOR,
    # images, versions, servers, the farm, tokens
    ("POST", "/vdisks"): ADMIN,
    ("PATCH", "/vdisks/{name}"): ADMIN,
    ("DELETE", "/vdisks/{name}"): ADMIN,
    ("POST", "/vdisks/{name}/export"): ADMIN,
    ("POST", "/vdisks/{name}/repair"): ADMIN,
    ("POST", "/vdisks/{name}/boot"): ADMIN,
    ("POST", "/vdisks/{name}/versions"): ADMIN,
    ("POST", "/vdisks/{name}/versions/promote"): ADMIN,
    ("POST", "/vdisks/{name}/versions/revert"): ADMIN,
    ("POST", "/vdisks/{name}/versions/override"): ADMIN,
    ("POST", "/vdisks/{name}/versions/merge"): ADMIN,
    ("DELETE", "/vdisks/{name}/versions/newest"): ADMIN,
    ("POST", "/locks/{vdisk}/home"): ADMIN,
    ("PATCH", "/servers/{name}"): ADMIN,
    ("PATCH", "/settings"): ADMIN,
    ("POST", "/stores"): ADMIN,
    ("PATCH", "/stores/{name}"): ADMIN,
    ("POST", "/replication/start"): ADMIN,
    ("GET", "/tokens"): ADMIN,
    ("POST", "/tokens"): ADMIN,
    ("POST", "/tokens/{name}/revoke"): ADMIN,
}

# POST /login is open to every device; from a token of this role or above
# (an agent or a trusted relay) `client_ip` in the body is believed and
# reservations are not capped per source address.
LOGIN_TRUSTED_ROLE = OPERATOR


def needed_role(method: str, path: str, prefix: str = "") -> str:
    """The least role that may call METHOD PATH (PREFIX, e.g. /api/v1, is
    stripped first); ADMIN for a route the table does not name."""
    if prefix and path.startswith(prefix):
        path = path[len(prefix) :]
    return MINIMAL_ROLE.get((method.upper(), path), ADMIN)
