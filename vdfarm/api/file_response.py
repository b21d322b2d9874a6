"""An HTTP answer whose body is a byte range of a file already open and
checked: what GET /boot/files sends.

Rules:
- The file is given open (the route checks what it opened; nothing is
  looked up again by path) and is closed when the answer ends, or when the
  answer is dropped unsent.
- Where the server offers `http.response.zerocopysend` (vdfarm's uvicorn
  protocol on plain TCP, `zerocopy_h11`) the body goes out with sendfile(2);
  elsewhere (TLS, an in-process test client) as Starlette's streaming answer
  (which stops when the client leaves) of blocks of READ_BLOCK read with
  pread on a worker thread, never the whole file in memory.
- Status and headers (Content-Range, ETag…) are the caller's (with a
  Content-Length of END - START unless given); this module sends exactly
  bytes START..END-1.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from vdfarm.api.zerocopy_h11 import ZEROCOPY_SEND

READ_BLOCK = 1 << 20


def file_blocks(fd: int, start: int, end: int) -> Iterator[bytes]:
    """Bytes START..END-1 of FD in blocks of at most READ_BLOCK (fewer if the
    file shrank under us: the answer then ends short)."""
    offset = start
    while offset < end:
        block = os.pread(fd, min(READ_BLOCK, end - offset), offset)
        if not block:
            return
        offset += len(block)
        yield block


class FileRangeResponse(Response):
    """Bytes START..END-1 of FILE (open for reading; closed by this answer)
    with STATUS_CODE and HEADERS."""

    def __init__(
        self,
        file: io.FileIO,
        start: int,
        end: int,
        status_code: int = 200,  # a default: FastAPI's OpenAPI reads it
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        given = dict(headers or {})
        if not any(name.lower() == "content-length" for name in given):
            given["Content-Length"] = str(end - start)
        super().__init__(None, status_code, given, media_type)
        self.file, self.start, self.end = file, start, end
        self.given_headers = given

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if ZEROCOPY_SEND in scope.get("extensions", {}):
                start = {"type": "http.response.start", "status": self.status_code}
                await send({**start, "headers": self.raw_headers})
                await send(
                    {
                        "type": ZEROCOPY_SEND,
                        "file": self.file,
                        "offset": self.start,
                        "count": self.end - self.start,
                        "more_body": False,
                    }
                )
            else:
                blocks = file_blocks(self.file.fileno(), self.start, self.end)
                streaming = StreamingResponse(
                    blocks, self.status_code, self.given_headers, self.media_type
                )
                await streaming(scope, receive, send)
        finally:
            self.file.close()
