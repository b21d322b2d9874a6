"""The time of the last full re-hash survives a restart: the next one
waits for the rest of the interval; anything odd means re-hash now."""

from __future__ import annotations

import os
import stat

import pytest

from vdfarm.daemon.rehash_clock import (
    REHASH_FILE,
    first_rehash_in,
    read_last_rehash,
    write_last_rehash,
)

HOUR = 3600.0


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        (None, 1000.0, 0.0),  # never re-hashed: now
        (1000.0, 1000.0 + HOUR, 5 * HOUR),  # one hour into six: five to go
        (1000.0, 1000.0 + 7 * HOUR, 0.0),  # overdue: now
        (5000.0, 1000.0, 0.0),  # the clock went back: now
    ],
)
def test_the_first_rehash_waits_for_the_rest_of_the_interval(last, now, expected):
    assert first_rehash_in(last, now, 6 * HOUR) == expected


def test_the_time_is_written_private_and_read_back(tmp_path):
    assert read_last_rehash(tmp_path) is None
    write_last_rehash(tmp_path, 1234567.5)
    assert read_last_rehash(tmp_path) == 1234567.5
    mode = stat.S_IMODE(os.stat(tmp_path / REHASH_FILE).st_mode)
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [REHASH_FILE]  # no temporary left


@pytest.mark.parametrize("content", ["", "soon", "nan", "-5", "\xff"])
def test_a_damaged_file_means_rehash_now(tmp_path, content):
    (tmp_path / REHASH_FILE).write_text(content, encoding="latin-1")
    assert read_last_rehash(tmp_path) is None


def test_a_symlink_planted_at_the_temporary_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / f".{REHASH_FILE}.{os.getpid()}").symlink_to(victim)
    write_last_rehash(tmp_path, 42.0)  # logged, not raised
    assert victim.read_text() == "keep"
    assert read_last_rehash(tmp_path) is None


def test_an_unwritable_data_dir_is_logged_not_raised(tmp_path, caplog):
    missing = tmp_path / "gone"
    write_last_rehash(missing, 42.0)
    assert "cannot record the re-hash time" in caplog.text
