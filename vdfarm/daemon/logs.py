"""The server process's log: one event, one line.

Rules:
- Every message is rendered through `vdfarm.nbd.text.printable` after its
  arguments are merged, so text a client chose (an export name, a protocol
  error) can never start a line of its own or drive a terminal. Escaping at
  the source (where a client's text is logged) stays the first defence;
  this is the net under it.
- A traceback keeps its lines (it is the server's own text, after the
  escaped message).
"""

from __future__ import annotations

import logging
import sys

from vdfarm.nbd.text import printable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MESSAGE_LIMIT = 8192


class OneLineFormatter(logging.Formatter):
    """A formatter whose messages are escaped into one line each."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        if not record.message.isprintable():  # text escaped at its source passes as it is
            record.message = printable(record.message, MESSAGE_LIMIT)
        return super().formatMessage(record)


def configure() -> None:
    """Send the process's log to stderr, one escaped line per event."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
