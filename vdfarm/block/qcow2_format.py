"""qcow2 on-disk structures: header, L1/L2 entries, refcounts. Pure, no I/O.

Follows qemu's docs/interop/qcow2.txt. Everything is big-endian on disk;
tables decoded here are Python ints (or an `array('Q')` of native ints).

Rules:
- `parse_header` takes the bytes of the image's first cluster (at least the
  fixed header, then as much of the extension area as there is) and either
  returns a `Qcow2Header` or raises `Qcow2FormatError` (not a qcow2 image, or
  a corrupt header) or its subclass `Qcow2UnsupportedError` (a valid image
  using a feature vdfarm does not do: encryption, an external data file,
  extended L2 entries, a non-zlib compression type, unknown incompatible
  bits). Nothing else escapes it, whatever the bytes.
- Entry decoders check reserved bits; a set reserved bit is corruption,
  reported by raising `Qcow2FormatError`. The I/O layer turns those into
  OSError(EIO) at run time.
- Supported: version 2 and 3, cluster sizes 512 B .. 2 MiB, refcount widths
  1 .. 64 bits.
"""

from __future__ import annotations

import errno
import struct
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC = b"QFI\xfb"
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_L1_BYTES = 32 << 20
MAX_REFTABLE_BYTES = 8 << 20
MAX_OFFSET = 1 << 56
MAX_BACKING_NAME = 1023
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104

# Incompatible feature bits.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
_INCOMPAT_KNOWN = 0x1F
_INCOMPAT_UNSUPPORTED = {
    INCOMPAT_DATA_FILE: "an external data file",
    INCOMPAT_COMPRESSION: "a non-zlib compression type",
    INCOMPAT_EXTL2: "extended L2 entries (subclusters)",
}

# Header extension types.
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_DATA_FILE = 0x44415441

# Header field offsets we rewrite in place.
REFCOUNT_TABLE_FIELDS_AT = 48  # refcount_table_offset (u64), refcount_table_clusters (u32)
AUTOCLEAR_FIELD_AT = 88

# L1/L2 entry bits.
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L1_RESERVED_MASK = 0x7F00_0000_0000_01FF
L2_RESERVED_MASK = 0x3F00_0000_0000_01FE
REFTABLE_RESERVED_MASK = 0x1FF

# What an L2 entry says about its guest cluster.
UNALLOCATED = 0  # read from the backing file (or zeroes)
NORMAL = 1  # data at the host offset
ZERO_PLAIN = 2  # reads as zeroes, no host cluster
ZERO_ALLOC = 3  # reads as zeroes, a host cluster stays reserved
COMPRESSED = 4  # deflate data somewhere in the file

_HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # 72 bytes
_HEADER_V3 = struct.Struct(">QQQII")  # bytes 72..103
_EXTENSION = struct.Struct(">II")
_REFTABLE_FIELDS = struct.Struct(">QI")


class Qcow2FormatError(ValueError):
    """The bytes are not a valid qcow2 image (or its metadata is corrupt)."""


def corrupt(message: str) -> OSError:
    """The OSError(EIO) for corrupt metadata found at run time (by the I/O
    layers: qcow2_meta, qcow2_alloc and the Qcow2File parts)."""
    return OSError(errno.EIO, f"corrupt qcow2 image: {message}")


class Qcow2UnsupportedError(Qcow2FormatError):
    """A valid qcow2 image that uses a feature vdfarm does not implement."""


@dataclass(frozen=True)
class Qcow2Header:
    """The decoded header. Sizes are in bytes unless named otherwise."""

    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_LENGTH
    backing_format: str | None = None

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_entries(self) -> int:
        return 1 << (self.cluster_bits - 3)

    @property
    def has_backing_file(self) -> bool:
        return self.backing_file_offset != 0

    @property
    def is_dirty(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_DIRTY)

    @property
    def is_corrupt(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_CORRUPT)


def parse_header(buf: bytes) -> Qcow2Header:
    """Decode the header (and extensions) at the start of `buf`.

    Raises Qcow2FormatError (bad magic, truncated, out-of-range fields,
    malformed extensions) or Qcow2UnsupportedError (see module docstring).
    """
    if len(buf) < V2_HEADER_LENGTH:
        raise Qcow2FormatError(f"file too short for a qcow2 header ({len(buf)} bytes)")
    (
        magic,
        version,
        backing_off,
        backing_len,
        cluster_bits,
        size,
        crypt,
        l1_size,
        l1_off,
        rt_off,
        rt_clusters,
        nb_snapshots,
        snap_off,
    ) = _HEADER_V2.unpack_from(buf)
    if magic != MAGIC:
        raise Qcow2FormatError("not a qcow2 image (bad magic)")
    if version not in (2, 3):
        raise Qcow2UnsupportedError(f"qcow2 version {version} is not supported (only 2 and 3)")
    fields: dict[str, int] = {
        "version": version,
        "backing_file_offset": backing_off,
        "backing_file_size": backing_len,
        "cluster_bits": cluster_bits,
        "size": size,
        "l1_size": l1_size,
        "l1_table_offset": l1_off,
        "refcount_table_offset": rt_off,
        "refcount_table_clusters": rt_clusters,
        "nb_snapshots": nb_snapshots,
        "snapshots_offset": snap_off,
    }
    if version == 3:
        fields.update(_parse_v3_fields(buf))
    if crypt != 0:
        raise Qcow2UnsupportedError(f"encrypted qcow2 images are not supported (method {crypt})")
    _check_features(fields.get("incompatible_features", 0))
    _check_geometry(fields)
    extensions_end = min(len(buf), 1 << cluster_bits)
    header_length = fields.get("header_length", V2_HEADER_LENGTH)
    backing_format = _parse_extensions(buf, header_length, extensions_end)
    return Qcow2Header(**fields, backing_format=backing_format)


def _parse_v3_fields(buf: bytes) -> dict[str, int]:
    if len(buf) < V3_HEADER_LENGTH:
        raise Qcow2FormatError(f"file too short for a version 3 header ({len(buf)} bytes)")
    incompat, compat, autoclear, refcount_order, header_length = _HEADER_V3.unpack_from(buf, 72)
    if header_length < V3_HEADER_LENGTH or header_length % 8:
        raise Qcow2FormatError(f"bad header length {header_length}")
    if len(buf) < header_length:
        raise Qcow2FormatError(f"file too short for its {header_length}-byte header")
    if refcount_order > 6:
        raise Qcow2FormatError(f"refcount order {refcount_order} is over 6")
    if header_length > 104 and buf[104] != 0 and not incompat & INCOMPAT_COMPRESSION:
        raise Qcow2FormatError("compression type set without its feature bit")
    return {
        "incompatible_features": incompat,
        "compatible_features": compat,
        "autoclear_features": autoclear,
        "refcount_order": refcount_order,
        "header_length": header_length,
    }


def _check_features(incompat: int) -> None:
    for bit, what in _INCOMPAT_UNSUPPORTED.items():
        if incompat & bit:
            raise Qcow2UnsupportedError(f"qcow2 images with {what} are not supported")
    unknown = incompat & ~_INCOMPAT_KNOWN
    if unknown:
        raise Qcow2UnsupportedError(f"unknown incompatible qcow2 features 0x{unknown:x}")


def _check_geometry(f: dict[str, int]) -> None:
    bits = f["cluster_bits"]
    if not MIN_CLUSTER_BITS <= bits <= 63:
        raise Qcow2FormatError(f"bad cluster size 2^{bits}")
    if bits > MAX_CLUSTER_BITS:
        raise Qcow2UnsupportedError(f"cluster size 2^{bits} is over 2 MiB")
    cluster = 1 << bits
    if f["backing_file_offset"] and f["backing_file_size"] > MAX_BACKING_NAME:
        raise Qcow2FormatError(f"backing file name of {f['backing_file_size']} bytes is too long")
    if f["l1_size"] * 8 > MAX_L1_BYTES:
        raise Qcow2FormatError(f"L1 table of {f['l1_size']} entries is too large")
    clusters = -(-f["size"] // cluster)
    if -(-clusters // (cluster // 8)) > f["l1_size"]:
        raise Qcow2FormatError(
            f"L1 table of {f['l1_size']} entries is too small for a {f['size']}-byte disk"
        )
    if f["refcount_table_clusters"] * cluster > MAX_REFTABLE_BYTES:
        raise Qcow2FormatError(
            f"refcount table of {f['refcount_table_clusters']} clusters is too large"
        )
    for name in ("l1_table_offset", "refcount_table_offset", "snapshots_offset"):
        if f[name] % cluster:
            raise Qcow2FormatError(f"{name} {f[name]} is not cluster aligned")
    for name in (
        "l1_table_offset",
        "refcount_table_offset",
        "snapshots_offset",
        "backing_file_offset",
    ):
        if f[name] >= MAX_OFFSET:
            raise Qcow2FormatError(f"{name} {f[name]} is past 2^56")
    if f["refcount_table_clusters"] == 0 or f["refcount_table_offset"] == 0:
        raise Qcow2FormatError("image has no refcount table")
    if f["l1_size"] and f["l1_table_offset"] == 0:
        raise Qcow2FormatError("image has no L1 table")


def _parse_extensions(buf: bytes, start: int, end: int) -> str | None:
    """Walk the header extensions; return the backing format name, if any."""
    backing_format = None
    pos = start
    while pos + _EXTENSION.size <= end:
        kind, length = _EXTENSION.unpack_from(buf, pos)
        if kind == EXT_END:
            return backing_format
        data_at = pos + _EXTENSION.size
        if data_at + length > end:
            raise Qcow2FormatError(f"header extension 0x{kind:08x} runs past the first cluster")
        if kind == EXT_BACKING_FORMAT:
            backing_format = _decode_name(buf[data_at : data_at + length], "backing format")
        pos = data_at + (length + 7) // 8 * 8
    return backing_format


def _decode_name(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Qcow2FormatError(f"{what} name is not valid UTF-8") from None


def decode_backing_name(raw: bytes) -> str:
    """The backing file name stored at backing_file_offset.

    Raises Qcow2FormatError if it is not UTF-8."""
    return _decode_name(raw, "backing file")


def encode_refcount_table_fields(offset: int, clusters: int) -> bytes:
    """Header bytes at REFCOUNT_TABLE_FIELDS_AT for a moved refcount table."""
    return _REFTABLE_FIELDS.pack(offset, clusters)


# -- tables ------------------------------------------------------------------


def decode_table(raw: bytes) -> array[int]:
    """Big-endian u64 table bytes → array('Q') of native ints."""
    table = array("Q")
    table.frombytes(raw[: len(raw) // 8 * 8])
    if sys.byteorder == "little":
        table.byteswap()
    return table


def encode_table(table: Iterable[int]) -> bytes:
    """array('Q') (or list of ints) → big-endian bytes."""
    out = array("Q", table)
    if sys.byteorder == "little":
        out.byteswap()
    return out.tobytes()


def l1_l2_offset(entry: int) -> int:
    """The L2 table offset of an L1 entry (0 = no table).

    Raises Qcow2FormatError if reserved bits are set."""
    if entry & L1_RESERVED_MASK:
        raise Qcow2FormatError(f"L1 entry 0x{entry:016x} has reserved bits set")
    return entry & OFFSET_MASK


def l2_kind(entry: int, version: int) -> int:
    """Classify an L2 entry: UNALLOCATED, NORMAL, ZERO_PLAIN, ZERO_ALLOC or
    COMPRESSED. Raises Qcow2FormatError for reserved bits, or a zero flag in
    a version 2 image."""
    if entry & OFLAG_COMPRESSED:
        return COMPRESSED
    if entry & L2_RESERVED_MASK:
        raise Qcow2FormatError(f"L2 entry 0x{entry:016x} has reserved bits set")
    if entry & OFLAG_ZERO:
        if version < 3:
            raise Qcow2FormatError("zero cluster in a version 2 image")
        return ZERO_ALLOC if entry & OFFSET_MASK else ZERO_PLAIN
    return NORMAL if entry & OFFSET_MASK else UNALLOCATED


def compressed_location(entry: int, cluster_bits: int) -> tuple[int, int]:
    """(host offset, byte count to read) of a compressed L2 entry; the count
    may run past the deflate stream's end, never short of it."""
    shift = 62 - (cluster_bits - 8)
    offset = entry & ((1 << shift) - 1)
    sectors = ((entry >> shift) & ((1 << (cluster_bits - 8)) - 1)) + 1
    return offset, sectors * 512 - (offset & 511)


def compressed_host_range(entry: int, cluster_bits: int) -> tuple[int, int]:
    """(start, length) of the host bytes a compressed cluster holds a
    reference on, as qemu counts them (whole 512-byte sectors)."""
    offset, length = compressed_location(entry, cluster_bits)
    start = offset & ~511
    return start, offset + length - start


# -- refcounts ---------------------------------------------------------------


def refcount_entries_per_block(cluster_bits: int, refcount_order: int) -> int:
    return (1 << (cluster_bits + 3)) >> refcount_order


def refcount_get(block: bytes | bytearray, index: int, order: int) -> int:
    """Refcount number `index` in a refcount block of width 2^order bits."""
    if order >= 3:
        width = 1 << (order - 3)
        at = index * width
        return int.from_bytes(block[at : at + width], "big")
    bits = 1 << order
    per_byte = 8 >> order
    return (block[index // per_byte] >> ((index % per_byte) * bits)) & ((1 << bits) - 1)


def refcount_set(block: bytearray, index: int, order: int, value: int) -> None:
    """Store `value` as refcount number `index`.

    Raises Qcow2FormatError if it does not fit the refcount width."""
    bits = 1 << order
    if not 0 <= value < (1 << bits):
        raise Qcow2FormatError(f"refcount {value} does not fit in {bits} bits")
    if order >= 3:
        width = bits >> 3
        block[index * width : (index + 1) * width] = value.to_bytes(width, "big")
        return
    per_byte = 8 >> order
    shift = (index % per_byte) * bits
    mask = ((1 << bits) - 1) << shift
    at = index // per_byte
    block[at] = (block[at] & ~mask & 0xFF) | (value << shift)


def reftable_block_offset(entry: int) -> int:
    """The refcount block offset in a refcount table entry (0 = none).

    Raises Qcow2FormatError if reserved bits are set or the offset is past
    the 64 PB (2^56) that every qcow2 offset stays below."""
    if entry & REFTABLE_RESERVED_MASK or entry >> 56:
        raise Qcow2FormatError(f"refcount table entry 0x{entry:016x} is not a block offset")
    return entry
