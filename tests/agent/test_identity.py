"""The identity in a server's export description, and the copy check."""

from vdfarm.agent.identity import Identity, identity_problem, parse_identity

SHA = "ab" * 32
TEXT = f"vdfarm vdisk=golden version=3 sha256={SHA} size=1048576"
EXPECTED = Identity("golden", 3, SHA, 1048576)


def test_the_identity_is_read_alone_or_inside_a_description():
    assert parse_identity(TEXT) == EXPECTED
    assert parse_identity(f"vDisk golden (standard); {TEXT}") == EXPECTED
    assert parse_identity(TEXT.replace(SHA, SHA.upper())) == EXPECTED


def test_no_identity_is_none():
    for text in (
        None,
        "",
        "vDisk golden (standard)",
        TEXT.replace("size=", "size=x"),
        TEXT.replace(SHA, SHA[:-1]),
        "xvdfarm" + TEXT[6:],
    ):
        assert parse_identity(text) is None, text


def test_the_copy_check_names_what_differs():
    assert identity_problem(EXPECTED, 1048576, TEXT) is None
    assert "no vdfarm identity" in identity_problem(EXPECTED, 1048576, "vDisk golden")
    assert "version 4" in identity_problem(
        EXPECTED, 1048576, TEXT.replace("version=3", "version=4")
    )
    assert "sha256" in identity_problem(EXPECTED, 1048576, TEXT.replace(SHA, "cd" * 32))
    assert "bytes" in identity_problem(EXPECTED, 4096, TEXT)
    assert "vDisk other" in identity_problem(EXPECTED, 1048576, TEXT.replace("golden", "other"))


def test_a_copy_without_a_fixed_hash_matches_only_one_without():
    text = TEXT.replace(SHA, "-")
    unhashed = Identity("golden", 3, None, 1048576)
    assert parse_identity(text) == unhashed
    assert identity_problem(unhashed, 1048576, text) is None
    assert identity_problem(unhashed, 1048576, TEXT) is not None
    assert identity_problem(EXPECTED, 1048576, text) is not None
