"""Fixtures for the boot tests: a network namespace of the test's own
(tests/boot/netns.py), removed with everything in it at the end."""

from __future__ import annotations

import pytest

from tests.boot.netns import BootNetwork, NamespaceUnavailable


@pytest.fixture
def boot_network():
    try:
        network = BootNetwork()
    except NamespaceUnavailable as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    with network:
        yield network
