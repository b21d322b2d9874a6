"""Tell the farm about a failover: POST {url}/api/v1/devices/{name}/failover.

Rules: stdlib urllib, short timeout; the token (if any) as a Bearer header.
A failure to report is logged by the caller, never fatal: `report_failover`
raises OSError (urllib's errors are OSErrors) and nothing else expected.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
import urllib.request

from vdfarm.agent.session_types import FailoverRecord


def failover_body(record: FailoverRecord) -> dict[str, object]:
    return {
        "from": record.from_server,
        "to": record.to_server,
        "pause_ms": record.pause_ms,
        "retried": record.retried,
        "reason": record.reason,
    }


def report_failover(
    url: str,
    device: str,
    record: FailoverRecord,
    token: str | None,
    ca_file: str | None = None,
    timeout: float = 2.0,
) -> int:
    """POST the failover; the HTTP status. Raises OSError."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{url.rstrip('/')}/api/v1/devices/{urllib.parse.quote(device, safe='')}/failover",
        data=json.dumps(failover_body(record)).encode(),
        headers=headers,
        method="POST",
    )
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return int(response.status)
