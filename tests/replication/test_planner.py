"""The replication planner: which file to fetch, when to adopt a chain,
what to leave alone, what to remove — pure decisions on plain data."""

from __future__ import annotations

from dataclasses import replace

from vdfarm.replication.planner import (
    Adopt,
    Fetch,
    Waiting,
    boot_entry,
    chain_entries,
    plan,
    plan_vdisk,
    still_decided,
)
from vdfarm.service.replication import Peer, WantedFile, WantedVdisk
from vdfarm.store.manifest import BootFile, Manifest, ManifestFile

PEER = Peer(server_id=2, name="b", host="127.0.0.1", api_port=8081, api_tls=False, busy=0)
BASE = WantedFile(1, "base.raw", "raw", 1 << 20, "a" * 64, None)
V2 = WantedFile(2, "v2.qcow2", "qcow2", 4096, "b" * 64, "base.raw")


def wanted(*files: WantedFile, peers: dict | None = None, name: str = "golden") -> WantedVdisk:
    return WantedVdisk(
        vdisk_id=7,
        name=name,
        virtual_size=1 << 20,
        chain=tuple(files),
        peers={f.version: (PEER,) for f in files} if peers is None else peers,
        now_versions=frozenset(),
        max_rate_bps=None,
        windows=(),
    )


def manifest(*entries: ManifestFile, name: str = "golden") -> Manifest:
    return Manifest(vdisk=name, files=tuple(entries), virtual_size=1 << 20)


def entry(f: WantedFile, **changes) -> ManifestFile:
    data = dict(
        name=f.file_name,
        format=f.format,
        size=f.size,
        sha256=f.sha256,
        parent=f.parent_file,
        version=f.version,
    )
    data.update(changes)
    return ManifestFile(**data)


def test_a_new_vdisk_fetches_its_base_first():
    step = plan_vdisk(wanted(BASE, V2), None)
    assert step == Fetch(wanted(BASE, V2), BASE)


def test_a_new_version_fetches_only_its_delta():
    step = plan_vdisk(wanted(BASE, V2), manifest(entry(BASE)))
    assert isinstance(step, Fetch) and step.file == V2


def test_a_complete_chain_is_adopted_into_the_manifest():
    w = wanted(BASE, V2)
    # v2 arrived (listed by nobody yet): the manifest must become the chain
    step = plan_vdisk(w, manifest(entry(BASE), entry(V2)))
    assert step is None  # already the chain
    merged_base = WantedFile(1, "base-2.raw", "raw", 1 << 20, "c" * 64, None)
    w2 = wanted(merged_base)
    local = manifest(entry(merged_base), entry(V2, parent="base-2.raw"))
    assert plan_vdisk(w2, local) == Adopt("golden", chain_entries(w2), 1 << 20)


def test_a_manifest_ahead_of_the_chain_is_adopted_only_if_a_second_read_agrees():
    # A seal here wrote v2 into the manifest; the chain read before it ends
    # at the base, so the plan would retire v2 ...
    before = wanted(BASE)
    [adopt] = plan(
        [before], frozenset({"golden"}), {"golden": manifest(entry(BASE), entry(V2))}, {}
    ).adopts
    assert adopt == Adopt("golden", chain_entries(before), 1 << 20)
    # ... but the database, read again, has v2 now (or the vDisk is under an
    # intent and out of the work): the adopt is dropped.
    assert still_decided([adopt], [before], [wanted(BASE, V2)]) == []
    assert still_decided([adopt], [before], []) == []
    # a chain that really shrank (a merge or delete elsewhere) is adopted
    assert still_decided([adopt], [before], [wanted(BASE)]) == [adopt]


def test_a_file_with_another_hash_is_fetched_again():
    step = plan_vdisk(wanted(BASE), manifest(entry(BASE, sha256="f" * 64)))
    assert isinstance(step, Fetch) and step.file == BASE


def test_no_peer_means_waiting_not_fetching():
    step = plan_vdisk(wanted(BASE, peers={}), None)
    assert isinstance(step, Waiting) and "no up server" in step.why


def test_a_vdisk_written_here_is_left_alone():
    open_top = ManifestFile("v3.qcow2", "qcow2", None, None, parent="base.raw", version=3)
    assert plan_vdisk(wanted(BASE, V2), manifest(entry(BASE), open_top)) is None
    private = manifest(entry(BASE, unverified=True))
    assert plan_vdisk(wanted(BASE), private) is None


def test_orphans_and_stale_partials():
    decided = plan(
        [wanted(BASE, V2)],
        frozenset({"golden", "other"}),
        {"golden": manifest(entry(BASE)), "gone": None, "other": None},
        {
            "golden": [".repl-v2.qcow2", ".repl-v1.qcow2"],
            "other": [".repl-x.raw"],  # a store this server is not in: left alone
        },
    )
    assert decided.orphans == ("gone",)
    assert decided.remove_partials == (("golden", ".repl-v1.qcow2"),)
    assert [f.file for f in decided.fetches] == [V2]


KERNEL = WantedFile(1, "kernel-" + "c" * 64, "raw", 9000, "c" * 64, None, kind="kernel")
INITRD = WantedFile(2, "initrd-" + "d" * 64, "raw", 7000, "d" * 64, None, kind="initrd")
OLD_KERNEL = BootFile("kernel", 100, "e" * 64)


def booting(*files: WantedFile, boot=(KERNEL, INITRD), peers=None) -> WantedVdisk:
    w = wanted(*files)
    held = {f.file_name: (PEER,) for f in boot} if peers is None else peers
    return replace(w, boot_files=tuple(boot), boot_peers=held)


def test_boot_files_come_after_the_chain_from_their_own_peers():
    w = booting(BASE, V2)
    assert plan_vdisk(w, None) == Fetch(w, BASE)  # the chain first
    here = manifest(entry(BASE), entry(V2))
    assert plan_vdisk(w, here) == Fetch(w, KERNEL)
    with_kernel = replace(here, boot_files=(boot_entry(KERNEL),))
    assert plan_vdisk(w, with_kernel) == Fetch(w, INITRD)
    nobody = booting(
        BASE, V2, peers={KERNEL.file_name: (PEER,)}
    )  # the chain's peers hold no initrd
    step = plan_vdisk(nobody, with_kernel)
    assert isinstance(step, Waiting) and step.file == INITRD
    done = replace(here, boot_files=(boot_entry(KERNEL), boot_entry(INITRD)))
    assert plan_vdisk(w, done) is None
    assert (
        plan(
            [w],
            frozenset({"golden"}),
            {"golden": with_kernel},
            {"golden": [f".repl-{INITRD.file_name}"]},
        ).remove_partials
        == ()
    )  # a boot file's partial copy is wanted


def test_a_boot_file_listed_with_another_size_is_fetched_again():
    w = booting(BASE, boot=(KERNEL,))
    wrong = manifest(entry(BASE))
    wrong = replace(wrong, boot_files=(replace(boot_entry(KERNEL), size=1),))
    assert plan_vdisk(w, wrong) == Fetch(w, KERNEL)


def test_boot_files_no_version_boots_leave_with_an_adopt():
    w = booting(BASE, boot=(KERNEL,))
    stale = replace(manifest(entry(BASE)), boot_files=(boot_entry(KERNEL), OLD_KERNEL))
    assert plan_vdisk(w, stale) == Adopt("golden", chain_entries(w), 1 << 20, (boot_entry(KERNEL),))
    # a chain adopt keeps the boot files still booted, and only those
    merged = WantedFile(1, "base-2.raw", "raw", 1 << 20, "9" * 64, None)
    w2 = booting(merged, boot=(KERNEL,))
    assert plan_vdisk(
        w2,
        replace(
            stale, files=(entry(merged), entry(V2, parent="base-2.raw")), boot_files=(OLD_KERNEL,)
        ),
    ) == Adopt("golden", chain_entries(w2), 1 << 20, ())


def test_an_adopt_is_dropped_when_the_boot_files_changed_meanwhile():
    before = booting(BASE, boot=(KERNEL,))
    stale = replace(manifest(entry(BASE)), boot_files=(boot_entry(KERNEL), OLD_KERNEL))
    [adopt] = plan([before], frozenset({"golden"}), {"golden": stale}, {}).adopts
    # an attach here recorded OLD_KERNEL's successor meanwhile: decide again
    after = booting(BASE, boot=(KERNEL, INITRD))
    assert still_decided([adopt], [before], [after]) == []
    assert still_decided([adopt], [before], [before]) == [adopt]
