"""/vdisks: import, list, show, change, delete, verify, export, repair, boot
files (like `vdfarm vdisk …`).

Rules: paths, bodies and status codes only; every decision is the
service's. Import and export name files in the server's transfer directory
(`TransferService`: relative to it or absolute inside it, no links, an
export never overwrites), audited with the caller; so do the boot files
given to a vDisk's newest version (copied into the store).
A failed verification is an answer (`ok: false`), not an error. PATCH with
`subnet_affinity` (the login service's setting) is refused (422) together
with other fields, because two service calls could half-succeed.
"""

from __future__ import annotations

from fastapi import HTTPException

from vdfarm.api.deps import ActorDep, FarmDep, TransfersDep, make_router
from vdfarm.api.schemas import BootFilesBody, VdiskExport, VdiskImport, VdiskPatch, VerifyReport
from vdfarm.service.merges import ExportResult
from vdfarm.service.repairs import RepairResult
from vdfarm.service.vdisks import VdiskInfo
from vdfarm.service.versions import VersionInfo

router = make_router("vdisks")

MIXED_PATCH = (
    "change the subnet affinity in a request of its own: a PATCH with "
    "'subnet_affinity' cannot also change {fields}"
)


@router.get("/vdisks", response_model=list[VdiskInfo])
def list_vdisks(farm: FarmDep) -> list[VdiskInfo]:
    """Every vDisk of the farm, by name."""
    return farm.vdisks.list()


@router.post("/vdisks", response_model=VdiskInfo, status_code=201)
def import_vdisk(body: VdiskImport, transfers: TransfersDep, actor: ActorDep) -> VdiskInfo:
    """Import the image file SOURCE_PATH (raw, qcow2, vpc, vhdx, vmdk) of the
    transfer directory as a new vDisk."""
    return transfers.import_image(
        body.name,
        body.source_path,
        mode=body.mode,
        write_cache=body.write_cache,
        cache_limit_mb=body.cache_limit_mb,
        description=body.description,
        actor=actor,
        source_format=body.source_format,
        store=body.store,
    )


@router.get("/vdisks/{name}", response_model=VdiskInfo)
def show_vdisk(name: str, farm: FarmDep) -> VdiskInfo:
    """The vDisk NAME."""
    return farm.vdisks.show(name)


@router.patch("/vdisks/{name}", response_model=VdiskInfo)
def change_vdisk(name: str, body: VdiskPatch, farm: FarmDep, actor: ActorDep) -> VdiskInfo:
    """Change the mode, write cache, cache limit, description, max-versions,
    require-TLS or store set of NAME, or (alone) its subnet affinity."""
    if body.sets_affinity():
        others = body.other_fields()
        if others:
            raise HTTPException(
                status_code=422, detail=MIXED_PATCH.format(fields=", ".join(sorted(others)))
            )
        farm.logins.set_subnet_affinity(name, body.subnet_affinity, actor=actor)
        return farm.vdisks.show(name)
    return farm.vdisks.set(name, **body.changes(), actor=actor)


@router.delete("/vdisks/{name}", response_model=VdiskInfo)
def delete_vdisk(name: str, farm: FarmDep, actor: ActorDep) -> VdiskInfo:
    """Delete NAME from the farm and this store (refused while used or locked);
    answers the vDisk as it was."""
    return farm.vdisks.delete(name, actor=actor)


@router.post("/vdisks/{name}/verify", response_model=VerifyReport)
def verify_vdisk(name: str, farm: FarmDep) -> VerifyReport:
    """Check NAME's files in this server's store (sizes, sha256, qemu-img check)."""
    result = farm.vdisks.verify(name)
    return VerifyReport(vdisk=result.vdisk, ok=result.ok, problems=list(result.problems))


@router.post("/vdisks/{name}/export", response_model=ExportResult, status_code=201)
def export_vdisk(
    name: str, body: VdiskExport, transfers: TransfersDep, actor: ActorDep
) -> ExportResult:
    """Write a version of NAME, flattened, as a new image file (0600) in the
    server's transfer directory."""
    return transfers.export(name, body.path, body.format, body.version, actor=actor)


@router.post("/vdisks/{name}/repair", response_model=RepairResult)
def repair_vdisk(name: str, farm: FarmDep, actor: ActorDep) -> RepairResult:
    """Complete or roll back NAME's half-done merge or seal in this server's
    store; re-hash its private copy if its device wrote it."""
    return farm.repairs.repair(name, actor=actor)


@router.post("/vdisks/{name}/boot", response_model=VersionInfo)
def boot_files(
    name: str, body: BootFilesBody, transfers: TransfersDep, actor: ActorDep
) -> VersionInfo:
    """Give the newest version of NAME boot files (a kernel, an initramfs:
    files of the transfer directory, copied into the store) and a kernel
    command line, or remove them (`clear`); answers the version."""
    return transfers.attach_boot(
        name,
        kernel=body.kernel,
        initrd=body.initrd,
        cmdline=body.cmdline,
        clear=body.clear,
        actor=actor,
    )
