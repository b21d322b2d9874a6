"""Replication-test fixtures: a source farm whose API serves a vDisk of
random bytes on 127.0.0.1, and a receiver's empty store."""

from __future__ import annotations

import os

import pytest

from tests.api.serving import serving
from tests.service import conftest as service_fixtures
from vdfarm.api.auth import read_token
from vdfarm.replication.fetch import FileWant, PeerAddress
from vdfarm.store.chunks import CHUNK_SIZE

clock = service_fixtures.clock
farm = service_fixtures.farm

SIZE = 3 * CHUNK_SIZE + 4096


def import_bytes(farm, tmp_path, data: bytes, name: str = "w") -> FileWant:
    """Import DATA as vDisk NAME of FARM; the want of its base file."""
    source = tmp_path / f"{name}-src.raw"
    source.write_bytes(data)
    farm.vdisks.import_image(name, source)
    base = farm.versions.list(name)[0]
    return FileWant(name, base.file, base.size, base.sha256)


@pytest.fixture
def data():
    return os.urandom(SIZE)


@pytest.fixture
def want(farm, tmp_path, data):
    return import_bytes(farm, tmp_path, data)


@pytest.fixture
def source(farm, want):
    """The source farm's API, served: (PeerAddress 'good', its admin token)."""
    with serving(farm) as port:
        yield PeerAddress("good", f"http://127.0.0.1:{port}"), read_token(farm.data_dir)


@pytest.fixture
def vdisk_dir(tmp_path):
    (tmp_path / "receiver").mkdir()
    return tmp_path / "receiver" / "w"
