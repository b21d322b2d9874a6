"""Who may call what: the one table of route → the least role it needs.

Rules:
- Roles rank read < operator < admin (`vdfarm.service.tokens.role_allows`).
  `read` may GET everything (but the token list); `operator` runs devices
  and their sessions (add, change, assign, delete a device; release a lock;
  rebalance; verify a copy; log a device in for another address); `admin`
  does everything else: vDisks (import, change, delete, export, repair), versions
  (open, promote, revert, override, merge, delete), servers, store sets,
  replication start, farm settings, lock homes and tokens.
- A route is named by its method and its path under /api/v1 as FastAPI
  spells it. A route missing from the table needs `admin` (fail closed); a
  test checks every route of the app is in it.
- Pure data and one lookup: no FastAPI, no database.
"""

from __future__ import annotations

READ, OPERATOR, ADMIN = "read", "operator", "admin"

MINIMAL_ROLE: dict[tuple[str, str], str] = {
    # reads
    ("GET", "/audit"): READ,
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
    # devices and their sessions
    ("POST", "/devices"): OPERATOR,
    ("PATCH", "/devices/{name}"): OPERATOR,
    ("DELETE", "/devices/{name}"): OPERATOR,
    ("POST", "/locks/{vdisk}/release"): OPERATOR,
    ("POST", "/rebalance"): OPERATOR,
    ("POST", "/vdisks/{name}/verify"): OPERATOR,
    # images, versions, servers, the farm, tokens
    ("POST", "/vdisks"): ADMIN,
    ("PATCH", "/vdisks/{name}"): ADMIN,
    ("DELETE", "/vdisks/{name}"): ADMIN,
    ("POST", "/vdisks/{name}/export"): ADMIN,
    ("POST", "/vdisks/{name}/repair"): ADMIN,
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
