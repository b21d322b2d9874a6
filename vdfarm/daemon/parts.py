"""What a server process is made of: its options and its shared parts.

Rules:
- `ServerOptions` holds what `vdfarm server run` was given, already checked
  by the CLI; `ServerParts` holds what the tasks share: the Farm (opened by
  the CLI, closed by it), the stream server over the farm's port, the
  options, and the ports the listeners bound (set by their tasks' start,
  read by the tasks started after them).
- `advertised_address` decides the address devices are told to use: the
  --advertise given, else the listening host, else (a wildcard host) the
  host name, with a warning.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from vdfarm.api.limits import ApiLimits
from vdfarm.nbd.limits import ConnectionLimits
from vdfarm.nbd.tls_config import TLSSettings
from vdfarm.service.context import Farm
from vdfarm.service.servers import is_wildcard
from vdfarm.stream.server import StreamServer

log = logging.getLogger("vdfarm.daemon")


@dataclass(frozen=True)
class ServerOptions:
    """The options of `vdfarm server run` (see its --help)."""

    host: str = "127.0.0.1"
    nbd_port: int = 10809
    grace_seconds: float = 30.0
    lease_seconds: float = 30.0
    api_host: str | None = None  # None: `host`
    api_port: int | None = 8080  # None: no REST API
    auto_rebalance_every: float = 0.0  # seconds; 0: never
    advertise: str | None = None
    api_tls_cert: Path | None = None  # PEM; None: plain HTTP
    api_tls_key: Path | None = None  # None: the key is in the certificate file
    api_limits: ApiLimits = field(default_factory=ApiLimits)
    transfer_dir: Path | None = None  # None: DATA_DIR/transfer
    nbd_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    nbd_tls: TLSSettings = field(default_factory=TLSSettings)
    replication: bool = True  # pull what this server's stores lack from the peers
    inventory_every: float = 10.0  # seconds between checks of the store's names and sizes
    rehash_every: float = 6 * 3600.0  # seconds between full re-hashes of the store
    replication_max_rate_bps: int | None = None  # this server's own cap on copies; None: none
    peer_ca: Path | None = None  # PEM CA of the peers' HTTPS APIs; None: the system's


@dataclass
class ServerParts:
    """What the tasks of one server process share."""

    farm: Farm
    stream: StreamServer
    options: ServerOptions
    nbd_port: int | None = None  # bound by the NBD listener's start
    api_port: int | None = None  # bound by the API's start

    @property
    def api_host(self) -> str:
        return self.options.api_host or self.options.host


def advertised_address(host: str, advertise: str | None) -> str:
    """The address devices and other servers reach this server at:
    ADVERTISE, else HOST, else (HOST a wildcard) this machine's host name."""
    if advertise is not None:
        return advertise
    if not is_wildcard(host):
        return host
    name = socket.gethostname()
    log.warning(
        "listening on %s: telling devices to reach this server at its host "
        "name %s; give --advertise ADDR if they cannot resolve it",
        host,
        name,
    )
    return name
