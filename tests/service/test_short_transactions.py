"""Hole 9: no database transaction is open while qemu-img runs. qemu-img is
made to block (the runner waits on an event) during a merge, a promote's
seal, an export and an import; meanwhile other writers — a device added, a
login with its reservation — finish at once on SQLite (the database that
has one writer at a time)."""

from __future__ import annotations

import threading

import pytest

from tests.service.helpers import make_raw, new_sealed_version, write_version
from tests.service.multi import beat
from vdfarm.store import qemu_img

QUICK = 5.0  # seconds: SQLite's busy timeout is 30 s; a blocked writer waits that long


class BlockedQemuImg:
    """`qemu-img VERB` (however vdfarm.store.qemu_img starts it) stops at its
    first run until released."""

    def __init__(self, monkeypatch, verb):
        self.verb, self.entered, self.release = verb, threading.Event(), threading.Event()
        real_run, real_popen = qemu_img.subprocess.run, qemu_img.subprocess.Popen

        def stop_here(cmd) -> None:
            words = [str(w) for w in cmd]
            is_qemu_img = any(w.endswith("qemu-img") for w in words)
            if is_qemu_img and self.verb in words and not self.entered.is_set():
                self.entered.set()
                assert self.release.wait(60), "never released"

        def run(cmd, *args, **kwargs):
            stop_here(cmd)
            return real_run(cmd, *args, **kwargs)

        def popen(cmd, *args, **kwargs):  # a run whose progress is watched
            stop_here(cmd)
            return real_popen(cmd, *args, **kwargs)

        monkeypatch.setattr(qemu_img.subprocess, "run", run)
        monkeypatch.setattr(qemu_img.subprocess, "Popen", popen)


def in_thread(fn):
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # reported by the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def other_writers_finish(farm, tag):
    """A device add and a login with a reservation, each within QUICK seconds."""
    for n, call in enumerate(
        (lambda: farm.devices.add(f"new-{tag}", vdisk="w"), lambda: farm.logins.login("pp"))
    ):
        thread, outcome = in_thread(call)
        thread.join(QUICK)
        assert not thread.is_alive(), f"writer {n} waited for the transaction around qemu-img"
        assert "error" not in outcome, outcome.get("error")


@pytest.fixture
def vfarm(farm, tmp_path):
    farm.vdisks.import_image("w", make_raw(tmp_path / "w.raw", size=4 << 20))
    farm.devices.add("pp", vdisk="w")
    farm.devices.add("pm", vdisk="w", device_type="maintenance")
    for pattern in (0x11, 0x22):
        new_sealed_version(farm, pattern)
    beat(farm)
    return farm


def run_blocked(monkeypatch, farm, verb, slow, tag):
    blocked = BlockedQemuImg(monkeypatch, verb)
    thread, outcome = in_thread(slow)
    try:
        assert blocked.entered.wait(30), f"qemu-img {verb} never ran"
        other_writers_finish(farm, tag)
    finally:
        blocked.release.set()
        thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    return outcome["value"]


def test_merge(vfarm, monkeypatch):
    result = run_blocked(monkeypatch, vfarm, "rebase", lambda: vfarm.versions.merge("w"), "m")
    assert result.removed == (1,)


def test_promote_seal(vfarm, monkeypatch):
    vfarm.versions.new("w")
    write_version(vfarm, 0x33)
    result = run_blocked(
        monkeypatch, vfarm, "check", lambda: vfarm.versions.promote("w", "test"), "p"
    )
    assert result.version.access == "test" and result.version.sha256


def test_export(vfarm, monkeypatch, tmp_path):
    out = tmp_path / "out.qcow2"
    result = run_blocked(
        monkeypatch, vfarm, "convert", lambda: vfarm.versions.export("w", out, "qcow2"), "e"
    )
    assert result.path == out and out.exists()


def test_import(vfarm, monkeypatch, tmp_path):
    source = make_raw(tmp_path / "other.raw")
    result = run_blocked(
        monkeypatch, vfarm, "convert", lambda: vfarm.vdisks.import_image("v2", source), "i"
    )
    assert result.name == "v2"
