"""/settings: the farm's settings (like `vdfarm farm show` and `farm set`).

Rules: paths, bodies and status codes only; `vdfarm.service.settings` checks
the values (400 with the reason; nothing changed) and audits the change.
"""

from __future__ import annotations

from vdfarm.api.deps import ActorDep, FarmDep, make_router
from vdfarm.api.schemas import SettingsPatch
from vdfarm.service.settings import Settings

router = make_router("settings")


@router.get("/settings", response_model=Settings)
def show_settings(farm: FarmDep) -> Settings:
    """Heartbeat timeout, boot phase and rebalance trigger of the whole farm."""
    return farm.settings.show()


@router.patch("/settings", response_model=Settings)
def change_settings(body: SettingsPatch, farm: FarmDep, actor: ActorDep) -> Settings:
    """Change some of the farm's settings (absent fields stay as they are)."""
    return farm.settings.change(**body.model_dump(exclude_none=True), actor=actor)
