"""The identity a vdfarm server puts in its export description, and the
check that a server holds the same copy as the first one the agent used.

Job: `parse_identity` reads `vdfarm vdisk=NAME version=N sha256=HEX
size=BYTES` (`sha256=-`: no fixed hash) out of an NBD export description; `identity_problem` says why
a server's export is not the copy the login promised (or None).
Rules: pure, no I/O. A description without the identity is no identity:
the agent refuses that server (it never serves bytes it cannot vouch for).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_IDENTITY = re.compile(
    r"(?:^|\s)vdfarm vdisk=(?P<vdisk>\S+) version=(?P<version>\d+) "
    r"sha256=(?P<sha256>[0-9a-fA-F]{64}|-) size=(?P<size>\d+)(?:\s|$)"
)


@dataclass(frozen=True)
class Identity:
    """Which copy a server serves: vDisk, version, its sha256 (None: the copy
    has no fixed hash, e.g. a private-mode vDisk being written), virtual size."""

    vdisk: str
    version: int
    sha256: str | None
    size: int


def parse_identity(description: str | None) -> Identity | None:
    """The identity in DESCRIPTION, or None if it carries none."""
    if not description:
        return None
    match = _IDENTITY.search(description)
    if match is None:
        return None
    return Identity(
        vdisk=match["vdisk"],
        version=int(match["version"]),
        sha256=None if match["sha256"] == "-" else match["sha256"].lower(),
        size=int(match["size"]),
    )


def identity_problem(expected: Identity, export_size: int, description: str | None) -> str | None:
    """Why the export (its size and description) is not the EXPECTED copy,
    as one line; None when it is."""
    found = parse_identity(description)
    if found is None:
        return "the server's export carries no vdfarm identity (not a verified copy)"
    if found.vdisk != expected.vdisk:
        return f"the server serves vDisk {found.vdisk}, not {expected.vdisk}"
    if found.version != expected.version:
        return f"the server serves version {found.version}, not {expected.version}"
    if found.sha256 != (expected.sha256.lower() if expected.sha256 else None):
        return f"the server's copy of version {found.version} has a different sha256"
    if found.size != expected.size or export_size != expected.size:
        return f"the server's export is {export_size} bytes, not {expected.size}"
    return None
