"""Test helper: turn a DeviceCache read plan into bytes, checking its shape on the way."""


def assemble(plan, offset, length, upstream):
    """The bytes a plan reads for [offset, offset+length): its cached pieces
    as given, its upstream pieces from UPSTREAM. Asserts the pieces cover the
    range in order, have the bytes they claim, and no two neighbours are
    both upstream."""
    out = bytearray()
    at = offset
    previous_upstream = False
    for piece_offset, piece_length, data in plan:
        assert piece_offset == at and piece_length > 0
        if data is None:
            assert not previous_upstream, "neighbouring upstream pieces not merged"
            out += upstream[piece_offset : piece_offset + piece_length]
        else:
            assert len(data) == piece_length
            out += data
        previous_upstream = data is None
        at += piece_length
    assert at == offset + length
    return bytes(out)
