import errno

import pytest

from vdfarm.block.fenced import FencedLayer
from vdfarm.block.memory import MemoryDisk


def test_changes_pass_until_fenced_then_every_change_is_eperm_and_reaches_nothing():
    disk = MemoryDisk(4096)
    fenced = False
    layer = FencedLayer(disk, lambda: fenced)
    layer.pwrite(0, b"a" * 512)
    layer.zero(512, 512)
    layer.trim(1024, 512)
    fenced = True
    for change in (
        lambda: layer.pwrite(0, b"b" * 512),
        lambda: layer.zero(0, 512),
        lambda: layer.trim(0, 512),
    ):
        with pytest.raises(OSError) as info:
            change()
        assert info.value.errno == errno.EPERM
    assert bytes(layer.pread(0, 512)) == b"a" * 512  # reads pass, nothing changed
    layer.flush()  # what was written before the fence may still be made durable
