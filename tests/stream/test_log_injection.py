"""A client's text never forges a line of the server's log: export names
with line breaks and terminal escapes are escaped, at the source and by the
server's log formatter."""

from __future__ import annotations

import logging

import pytest

from tests.stream.rawclient import NBDOptionError, RawClient
from vdfarm.daemon.logs import OneLineFormatter

FORGED = "2026-12-01 10:00:00,000 WARNING vdfarm.stream: device pc1 lost its lock"


def test_an_export_name_cannot_forge_a_log_line(farm):
    farm.start()
    client = RawClient(farm.port)
    with pytest.raises(NBDOptionError):
        client.connect(f"nobody\n{FORGED}\x1b[2J")
    client.close()
    farm.stop()
    log = farm.server_log()
    assert "nobody\\n2026-12-01" in log  # the refusal is logged, escaped
    assert not any(line.startswith(FORGED) for line in log.splitlines())
    assert "\x1b" not in log


def test_the_formatter_escapes_every_message_but_keeps_tracebacks():
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "name %s", ("a\nb\x1b",), None)
    assert formatter.format(record) == "INFO name a\\nb\\x1b"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = formatter.format(record)
    assert text.startswith("ERROR failed\nTraceback") and "ValueError: boom" in text
