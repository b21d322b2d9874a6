"""Hostile source images for import tests: each names a file on the host.

Every maker is real qemu-img output, at most patched by hand where qemu-img
would otherwise have to write the host file (a data file is created by
`qemu-img create`): nothing here ever writes outside the test's directory.
"""

from __future__ import annotations

import struct
import subprocess

SECRET = b"TOPSECRET host file, never to be served\n"
QCOW2_EXT_DATA_FILE = 0x44415441


def host_file(path, size=1 << 20):
    """A "host" file: SECRET at the start, SIZE bytes long."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.write(SECRET)
    return path


def _qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qcow2_with_data_file(path, data_file, size=1 << 20):
    """A qcow2 whose external data file is DATA_FILE (raw data file). The
    image is made with a scratch data file next to PATH, then its header
    extension is repointed at DATA_FILE, so DATA_FILE is never written."""
    scratch = path.with_name(path.name + ".scratch")
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-o", f"data_file={scratch},data_file_raw=on", str(path),
        str(size),
    )  # fmt: skip
    scratch.unlink()
    _repoint_data_file(path, str(data_file).encode())
    return path


def _repoint_data_file(path, name: bytes) -> None:
    data = bytearray(path.read_bytes())
    header_length = struct.unpack_from(">I", data, 100)[0]
    offset, exts = header_length, []
    while True:
        kind, length = struct.unpack_from(">II", data, offset)
        if kind == 0:
            break
        payload = bytes(data[offset + 8 : offset + 8 + length])
        exts.append((kind, name if kind == QCOW2_EXT_DATA_FILE else payload))
        offset += 8 + (length + 7) // 8 * 8
    out = bytearray()
    for kind, payload in exts:
        out += struct.pack(">II", kind, len(payload)) + payload.ljust((len(payload) + 7) // 8 * 8)
    out += b"\0" * 8
    cluster = 1 << struct.unpack_from(">I", data, 20)[0]
    assert header_length + len(out) < cluster
    data[header_length : header_length + len(out)] = out
    path.write_bytes(bytes(data))


def qcow2_with_backing(path, backing, size=1 << 20):
    """A qcow2 whose backing file is BACKING (raw); BACKING is only read."""
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "raw", str(path), str(size))
    return path


def vmdk_flat(path, subformat="monolithicFlat", size=1 << 20):
    """A vmdk made by qemu-img whose data lives in separate extent files."""
    _qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", str(path), str(size))
    return path


def vmdk_descriptor(path, extent):
    """A hand-written descriptor vmdk whose one FLAT extent is EXTENT."""
    path.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n'
        f'RW 1 FLAT "{extent}" 0\n'
    )
    return path


def vmdk_sparse_naming(path, extent):
    """A binary (KDMV) sparse vmdk with capacity 0, whose embedded descriptor
    names EXTENT as a FLAT extent: qemu reads EXTENT as the disk."""
    _qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", str(path), "1M")
    data = bytearray(path.read_bytes())
    desc_offset, desc_size = struct.unpack_from("<QQ", data, 28)
    desc = (
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\nRW 1 FLAT "{extent}" 0\n'
    ).encode()
    start = desc_offset * 512
    data[start : start + desc_size * 512] = desc.ljust(desc_size * 512, b"\0")
    struct.pack_into("<Q", data, 12, 0)
    path.write_bytes(bytes(data))
    return path


def raw_looking_like(path, image, size=1 << 20):
    """A raw disk of SIZE bytes whose first bytes are the file IMAGE (as a
    device could write into its own disk)."""
    head = image.read_bytes()
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.write(head)
    return path
