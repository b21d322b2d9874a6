"""The write cache's file: created fresh with mode 0600, never through a
symlink, a leftover of ours replaced, removed at close; slots reused."""

import os
import stat

import pytest

from vdfarm.agent.cache import BLOCK, make_cache
from vdfarm.agent.cache_disk import DiskTier


def test_the_cache_file_is_created_0600_and_removed_at_close(tmp_path):
    path = tmp_path / "cache"
    cache = make_cache("device-disk", 16 * BLOCK, 0, path, 4 * BLOCK)
    found = os.lstat(path)
    assert stat.S_ISREG(found.st_mode)
    assert stat.S_IMODE(found.st_mode) == 0o600
    cache.write(0, b"\x01" * BLOCK, {})
    assert cache.stats()["disk_bytes"] == BLOCK
    cache.close()
    assert not path.exists()
    cache.close()  # twice is harmless


def test_a_symlink_at_the_path_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    link = tmp_path / "cache"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        make_cache("device-ram-overflow", 16 * BLOCK, BLOCK, link, 4 * BLOCK)
    assert target.read_bytes() == b"keep me"
    assert link.is_symlink()


def test_a_dangling_symlink_is_refused(tmp_path):
    link = tmp_path / "cache"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        make_cache("device-disk", 16 * BLOCK, 0, link, 4 * BLOCK)
    assert not (tmp_path / "nowhere").exists()


def test_a_directory_at_the_path_is_refused(tmp_path):
    (tmp_path / "cache").mkdir()
    with pytest.raises(FileExistsError):
        make_cache("device-disk", 16 * BLOCK, 0, tmp_path / "cache", 4 * BLOCK)
    assert (tmp_path / "cache").is_dir()


def test_a_leftover_file_of_ours_is_replaced_by_an_empty_one(tmp_path):
    path = tmp_path / "cache"
    path.write_bytes(b"\x07" * 3 * BLOCK)
    tier = DiskTier(path, 4, BLOCK)
    found = os.lstat(path)
    assert found.st_size == 0
    assert stat.S_IMODE(found.st_mode) == 0o600
    tier.close()


def test_close_leaves_a_file_that_replaced_ours_alone(tmp_path):
    path = tmp_path / "cache"
    tier = DiskTier(path, 4, BLOCK)
    os.unlink(path)
    path.write_bytes(b"someone else's")
    tier.close()
    assert path.read_bytes() == b"someone else's"


def test_slots_are_reused_and_the_file_never_outgrows_the_capacity(tmp_path):
    path = tmp_path / "cache"
    tier = DiskTier(path, 3, BLOCK)
    for round_ in range(10):
        for block in range(3):
            tier.put(100 * round_ + block, bytes([round_ + 1]) * BLOCK)
        for block in range(3):
            assert tier.get(100 * round_ + block) == bytes([round_ + 1]) * BLOCK
            tier.remove(100 * round_ + block)
    assert os.lstat(path).st_size <= 3 * BLOCK
    with pytest.raises(ValueError):
        for block in range(4):
            tier.put(block, b"x" * BLOCK)
    tier.close()
