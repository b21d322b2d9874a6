"""Private runtime directories: the write caches of a server are out of
every other local user's reach (issue: a local user became root through
the predictable /dev/shm cache directory)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.stream import rawclient as rc
from vdfarm.stream.runtime_dirs import UnsafeDirectory, private_dir, ram_cache_dir

BLOCK = 4096
NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def as_nobody(*argv: str) -> None:
    """Run ARGV as the unprivileged user nobody (the local attacker)."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed"
    subprocess.run(
        [setpriv, f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups", *argv],
        check=True,
    )


def test_private_dir_is_made_0700(tmp_path):
    made = private_dir(tmp_path / "a" / "cache")
    assert stat.S_IMODE(made.lstat().st_mode) == 0o700


def test_private_dir_refuses_a_link_and_a_file(tmp_path):
    (tmp_path / "target").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(UnsafeDirectory, match="symbolic link"):
        private_dir(tmp_path / "link")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UnsafeDirectory, match="not a directory"):
        private_dir(tmp_path / "file")


@needs_root
def test_private_dir_refuses_someone_elses_and_closes_an_open_one_of_ours(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(UnsafeDirectory, match=f"owned by uid {NOBODY.pw_uid}"):
        private_dir(theirs)
    assert theirs.lstat().st_uid == NOBODY.pw_uid  # never "repaired"
    ours = tmp_path / "ours"
    ours.mkdir()
    ours.chmod(0o777)
    private_dir(ours)
    assert stat.S_IMODE(ours.lstat().st_mode) == 0o700


@needs_root
def test_ram_dir_is_fresh_and_removes_only_our_own_leftovers(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    shm.chmod(0o1777)
    ours = shm / "vdfarm-u1-old"
    ours.mkdir(mode=0o700)
    (ours / "device-1.wcache").write_bytes(b"stale")
    theirs = shm / "vdfarm-u1-planted"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    made = ram_cache_dir("u1", tmp_path / "fallback", shm=shm)
    assert made.parent == shm and made.name.startswith("vdfarm-u1-")
    assert made not in (ours, theirs)
    assert stat.S_IMODE(made.lstat().st_mode) == 0o700 and made.lstat().st_uid == os.geteuid()
    assert not ours.exists() and theirs.exists()
    assert ram_cache_dir("u1", tmp_path / "fallback", shm=shm) != made  # fresh every start


@needs_root
def test_a_local_user_cannot_make_a_device_write_overwrite_a_file(farm, test_image, tmp_path):
    """The attack as reported: as nobody, plant the cache directory the
    server used to take (/dev/shm/vdfarm-<uuid>) and one under its new
    prefix, each with device-N.wcache linked to a root-owned file; a device
    write must not reach that file."""
    farm.cli("vdisk", "import", "golden", str(test_image), "--write-cache", "server-ram")
    farm.cli("device", "add", "pc1", "--vdisk", "golden")
    uuid = json.loads((farm.data_dir / "server.json").read_text())["uuid"]
    device_id = json.loads(farm.cli("--json", "device", "show", "pc1").stdout)["id"]
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file\n")
    victim.chmod(0o644)
    tmp_path.chmod(0o755)
    planted = [Path(f"/dev/shm/vdfarm-{uuid}"), Path(f"/dev/shm/vdfarm-{uuid}-aaaaaaaa")]
    try:
        for where in planted:
            as_nobody("mkdir", "-m", "0777", str(where))
            as_nobody("ln", "-s", str(victim), str(where / f"device-{device_id}.wcache"))
        farm.start(grace=0)
        client = rc.RawClient(farm.port)
        client.connect("pc1")
        assert client.call(rc.CMD_WRITE, 0, BLOCK, data=b"\x66" * BLOCK)[0] == 0
        assert client.call(rc.CMD_READ, 0, BLOCK) == (0, b"\x66" * BLOCK)
        assert victim.read_bytes() == b"root's file\n"
        caches = [
            c
            for c in Path("/dev/shm").glob(f"vdfarm-{uuid}-*/device-{device_id}.wcache")
            if not c.is_symlink()
        ]
        assert len(caches) == 1 and caches[0].parent.lstat().st_uid == os.geteuid()
        assert stat.S_IMODE(caches[0].parent.lstat().st_mode) == 0o700
        client.close()
    finally:
        for where in planted:
            shutil.rmtree(where, ignore_errors=True)
