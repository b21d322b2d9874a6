"""Errors of the local store.

Rules: every failure of `vdfarm.store` is a `StoreError` with a one-line,
human message; the service layer maps the subclasses to its own errors
(bad name / unsupported source → Invalid, exists → Conflict, missing →
NotFound). The store never leaves a half-made vDisk behind when it raises.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store failure; `str(err)` is one human line."""


class InvalidName(StoreError):
    """A vDisk name that does not match the allowed pattern."""


class UnsupportedImage(StoreError):
    """A source image the store refuses (format, backing file, not a file)."""


class VdiskExists(StoreError):
    """The store already holds a vDisk of that name."""


class VdiskMissing(StoreError):
    """The store holds no vDisk of that name."""


class ManifestError(StoreError):
    """A manifest that is missing, unreadable or breaks the manifest rules."""


class StoreFull(StoreError):
    """The store's disk (or the owner's quota) has no room left for a write."""


class ManifestChanged(StoreError):
    """A vDisk's manifest is no longer the one a decision was made on (a
    step of this server changed it meanwhile)."""


class BadChunkList(StoreError):
    """A chunk list (from a peer: untrusted) that breaks the chunk list rules."""


class BadChunk(StoreError):
    """A chunk whose length or sha256 is not the one its chunk list names."""


class BadFrame(StoreError):
    """A framed (compressed) body from a peer that breaks the frame rules."""


class FileMismatch(StoreError):
    """A received file whose whole sha256 or size is not the one expected."""
