"""An HTTP server that records the path of every GET it gets (one line each,
in the file LOG) and answers 404: where a test's VM shows which URL its
iPXE fetched, before the farm's /boot/ipxe answers it.

Usage: python http_recorder.py ADDRESS PORT LOG (the standard library only;
run inside a test's network namespace).
"""

import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Recorder(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        with open(sys.argv[3], "a", encoding="ascii", errors="replace") as log:
            log.write(self.path + "\n")
        body = b"not here\n"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    HTTPServer((sys.argv[1], int(sys.argv[2])), Recorder).serve_forever()
