"""Fixtures of the agent tests: the one real three-server farm they share.

Rules: the farm (tests/agent/farm.py) is made once for the package, on a
fresh PostgreSQL database (skips without one), with every vDisk the farm
tests use: `golden` (a small test image; devices pc1, and mv1 and mv2 of
the move test), `sample` (the bootable sample image; vm1 boots it, kc1
reads it through the kernel's client) and `pattern` (fio's verify pattern in its first PATTERN_MIB MiB,
zeroes after; device fio1), `diary` (private mode, on its home s1 only;
device pv1) and `mirror` (device mm1, whose copy the hash-mismatch test
replaces on one server for a while), `keep` (device kv1, whose vDisk gets
a new production version while its agent runs). An image whose tools are missing (the
sample image's, fio) is left out: its tests skip. Each test gets the farm
with all servers up, and leaves it so.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.farm import SERVERS, AgentFarm
from tests.conftest import make_test_image
from tests.farm.postgres import fresh_postgres_url
from tests.stream.cluster import Cluster
from vdfarm.image import sample
from vdfarm.image.errors import ImageBuildError

GOLDEN_SIZE = 8 << 20
SMALL_SIZE = 4 << 20  # the private and the hash-mismatch tests' vDisks
SAMPLE_MIB = 64
PATTERN_MIB = 32  # fio's read-verify region; the write-verify region follows
PATTERN_IMAGE_MIB = 48
FIO_PATTERN = "0xa5a5a5a5%o"  # fio's verify_pattern: a marker and the block's offset


def fio_pattern_image(path: Path) -> Path | None:
    """PATTERN_IMAGE_MIB MiB: fio's FIO_PATTERN in 4 KiB blocks over the
    first PATTERN_MIB MiB (written by fio itself), zeroes after; None without fio."""
    if shutil.which("fio") is None:
        return None
    subprocess.run(
        ["fio", "--name=pattern", f"--filename={path}", f"--size={PATTERN_MIB}m", "--bs=4k"]
        + ["--rw=write", "--ioengine=psync", "--verify=pattern", f"--verify_pattern={FIO_PATTERN}"]
        + ["--do_verify=0", "--verify_state_save=0", "--output=/dev/null"],
        cwd=path.parent,
        check=True,
        timeout=120,
    )
    with open(path, "r+b") as f:
        f.truncate(PATTERN_IMAGE_MIB << 20)
    return path


@pytest.fixture(scope="package")
def shared_farm(tmp_path_factory) -> Iterator[AgentFarm]:
    root = tmp_path_factory.mktemp("agentfarm")
    with fresh_postgres_url() as url:
        farm = AgentFarm(Cluster(root, url, list(SERVERS)), root)
        try:
            golden = make_test_image(root / "golden.raw", size=GOLDEN_SIZE)
            vdisks = {"golden": (golden, ("pc1", "mv1", "mv2"))}
            try:
                image = sample.build(root / "sample.raw", size_mib=SAMPLE_MIB)
                vdisks["sample"] = (image, ("vm1", "kc1"))
            except ImageBuildError as exc:
                print(f"no sample image: {exc}")
            pattern = fio_pattern_image(root / "pattern.raw")
            if pattern is not None:
                vdisks["pattern"] = (pattern, ("fio1",))
            vdisks["diary"] = (make_test_image(root / "diary.raw", SMALL_SIZE, seed=3), ("pv1",))
            vdisks["mirror"] = (make_test_image(root / "mirror.raw", SMALL_SIZE, seed=5), ("mm1",))
            vdisks["keep"] = (make_test_image(root / "keep.raw", SMALL_SIZE, seed=7), ("kv1",))
            farm.build(vdisks, private=("diary",))
            yield farm
        finally:
            farm.cluster.stop()


@pytest.fixture
def agent_farm(shared_farm) -> Iterator[AgentFarm]:
    """The shared farm, every server up before and after the test."""
    shared_farm.all_up()
    yield shared_farm
    shared_farm.all_up()
