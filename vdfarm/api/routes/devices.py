"""/devices: add, list, show, change (incl. assign), delete (like `vdfarm device …`).

Rules: paths, bodies and status codes only; every decision is the
service's. A device may be named by its name or its MAC. PATCH with
`vdisk` assigns (one service call); it is refused (422) together with other
fields, because two service calls could half-succeed.
POST /devices/{name}/failover is a device's agent reporting a failover
(role operator: the agent's `--token-file`), audited as `device.failover`.
"""

from __future__ import annotations

from fastapi import HTTPException

from vdfarm.api.deps import ActorDep, FarmDep, make_router
from vdfarm.api.schemas import DeviceCreate, DevicePatch, FailoverBody
from vdfarm.service.devices import DeviceInfo
from vdfarm.service.failovers import FailoverReport

router = make_router("devices")

MIXED_PATCH = (
    "change the vdisk in a request of its own: a PATCH with 'vdisk' cannot also change {fields}"
)


@router.get("/devices", response_model=list[DeviceInfo])
def list_devices(farm: FarmDep) -> list[DeviceInfo]:
    """Every device, by name."""
    return farm.devices.list()


@router.post("/devices", response_model=DeviceInfo, status_code=201)
def add_device(body: DeviceCreate, farm: FarmDep, actor: ActorDep) -> DeviceInfo:
    """Add a device, optionally with a MAC and an assigned vDisk."""
    return farm.devices.add(
        body.name,
        mac=body.mac,
        vdisk=body.vdisk,
        device_type=body.device_type,
        description=body.description,
        actor=actor,
    )


@router.get("/devices/{name}", response_model=DeviceInfo)
def show_device(name: str, farm: FarmDep) -> DeviceInfo:
    """The device NAME (a name or a MAC), with its live session if connected."""
    return farm.devices.show(name)


@router.patch("/devices/{name}", response_model=DeviceInfo)
def change_device(name: str, body: DevicePatch, farm: FarmDep, actor: ActorDep) -> DeviceInfo:
    """Change the type, MAC or description of NAME, or (alone) assign its vDisk."""
    if body.assigns():
        others = body.other_fields()
        if others:
            raise HTTPException(
                status_code=422, detail=MIXED_PATCH.format(fields=", ".join(sorted(others)))
            )
        return farm.devices.assign(name, body.vdisk, actor=actor)
    return farm.devices.set(name, **body.changes(), actor=actor)


@router.delete("/devices/{name}", response_model=DeviceInfo)
def delete_device(name: str, farm: FarmDep, actor: ActorDep) -> DeviceInfo:
    """Delete NAME (refused while it holds a vDisk lock); answers it as it was."""
    return farm.devices.delete(name, actor=actor)


@router.post("/devices/{name}/failover", response_model=FailoverReport, status_code=201)
def report_failover(
    name: str, body: FailoverBody, farm: FarmDep, actor: ActorDep
) -> FailoverReport:
    """A device's agent left server `from` for `to`: record it (audited)."""
    return farm.failovers.report(
        name,
        from_server=body.from_server,
        to_server=body.to_server,
        pause_ms=body.pause_ms,
        retried=body.retried,
        reason=body.reason,
        actor=actor,
    )
