"""Make a qcow2 file with a leaked cluster, as a crash between allocating a
cluster and linking it leaves one (for tests of check and seal)."""

from __future__ import annotations

import struct


def leak_one_cluster(image) -> None:
    """Give a new cluster at the end of IMAGE (qcow2 v3, 16-bit refcounts) a
    refcount of 1 that nothing references: what a crash between allocating
    and linking a cluster leaves."""
    with open(image, "r+b") as fh:
        header = fh.read(104)
        cluster_size = 1 << struct.unpack(">I", header[20:24])[0]
        table_offset = struct.unpack(">Q", header[48:56])[0]
        assert struct.unpack(">I", header[96:100])[0] == 4  # refcount_order: 16 bits
        fh.seek(table_offset)
        block_offset = struct.unpack(">Q", fh.read(8))[0]
        size = fh.seek(0, 2)
        index = -(-size // cluster_size)
        fh.truncate((index + 1) * cluster_size)
        fh.seek(block_offset + 2 * index)
        fh.write(struct.pack(">H", 1))
