"""`LocalFarm`: an open Farm with the interface of `FarmClient`.

Rules:
- The nouns are the Farm's own services (`vdisks`, `versions`, `boot`,
  `devices`, `locks`, `audit`, `servers`, `settings`, `tokens`, `repairs`,
  `replication`); the calls of its
  `moves` and `logins` services (rebalance, login, subnet affinity) are
  methods here, so a front end calls `farm.rebalance(...)` whether the farm
  is local or remote.
- No logic of its own: each method is one service call (plus, for the
  subnet affinity, a read of the vDisk it answers with). The audit actor is
  the Farm's own (`Farm.open(actor=...)`).
"""

from __future__ import annotations

from collections.abc import Sequence

from vdfarm.service.context import Farm
from vdfarm.service.login import LoginResult
from vdfarm.service.moves import RebalanceResult
from vdfarm.service.vdisks import VdiskInfo


class LocalFarm:
    """FARM (open; its owner closes it) behind the client interface."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.vdisks = farm.vdisks
        self.versions = farm.versions
        self.boot = farm.boot
        self.devices = farm.devices
        self.failovers = farm.failovers
        self.locks = farm.locks
        self.audit = farm.audit
        self.servers = farm.servers
        self.settings = farm.settings
        self.tokens = farm.tokens
        self.repairs = farm.repairs
        self.replication = farm.replication

    def rebalance(
        self, *, apply: bool, trigger_pct: float | None = None, auto: bool = False
    ) -> RebalanceResult:
        """See `MoveService.rebalance`. Raises Invalid, Unavailable."""
        return self.farm.moves.rebalance(
            apply=apply, trigger_pct=trigger_pct, auto=auto, actor=self.farm.actor
        )

    def login(
        self,
        name_or_mac: str,
        client_ip: str | None = None,
        reserve: bool = True,
        exclude: Sequence[str] | None = None,
    ) -> LoginResult:
        """See `LoginService.login`. Raises NotFound, Invalid, Unavailable."""
        return self.farm.logins.login(name_or_mac, client_ip, reserve, exclude)

    def set_subnet_affinity(self, vdisk_name: str, affinity: str) -> VdiskInfo:
        """Set the subnet affinity of a vDisk; answer the vDisk.

        Raises Invalid, NotFound, Unavailable.
        """
        self.farm.logins.set_subnet_affinity(vdisk_name, affinity, actor=self.farm.actor)
        return self.farm.vdisks.show(vdisk_name)

    def close(self) -> None:
        self.farm.close()
