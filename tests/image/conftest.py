"""Fixtures for image tests: one built sample image, and qemu-nbd to serve copies of it.

Rules: qemu-nbd is an independent NBD server (not vdfarm's), listening on
127.0.0.1 on a free port; every server started here is stopped at teardown.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_port
from vdfarm.image import sample

EXPORT = "sample"


@pytest.fixture(scope="session")
def sample_image(tmp_path_factory) -> Path:
    return sample.build(tmp_path_factory.mktemp("image") / "sample.raw", size_mib=64)


def read_pattern_block(path: Path) -> bytes:
    """The block the guest writes, read from the image file itself."""
    with open(path, "rb") as f:
        f.seek(sample.pattern_offset(path.stat().st_size))
        return f.read(sample.PATTERN_BLOCK_SIZE)


class QemuNbd:
    """qemu-nbd serving one raw file read/write, for several clients, until stopped."""

    def __init__(self, image: Path) -> None:
        self.image = image
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                "qemu-nbd",
                "--format=raw",
                "--persistent",
                "--shared=4",
                f"--export-name={EXPORT}",
                "--bind=127.0.0.1",
                f"--port={self.port}",
                str(image),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_port(self.port, self.process)

    @property
    def url(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/{EXPORT}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def serve_copy(sample_image, tmp_path):
    """serve_copy(name) -> a QemuNbd serving a fresh copy of the sample image."""
    if shutil.which("qemu-nbd") is None:
        pytest.skip("qemu-nbd is not installed")
    servers: list[QemuNbd] = []

    def serve(name: str) -> QemuNbd:
        copy = tmp_path / f"{name}.raw"
        shutil.copyfile(sample_image, copy)
        servers.append(QemuNbd(copy))
        return servers[-1]

    yield serve
    for server in servers:
        server.stop()
