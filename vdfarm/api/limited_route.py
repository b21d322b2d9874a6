"""Routes open to every machine on the network (no token), limited per
source address before anything else is read.

Rules:
- `RateLimitedRoute` spends one token of the source's bucket (an IPv4
  address or an IPv6 /64, `ratelimit.source_key`) before the handler runs,
  so a flood costs no body parsing and no database: 429 with Retry-After
  when the bucket is empty. Each open route family has its own bucket in
  `app.state` (`LIMITER`), so logins do not eat the boot files' share.
- An app without that bucket (a test app) is not limited.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from vdfarm.api.deps import client_host
from vdfarm.api.ratelimit import RateLimiter, source_key


class RateLimitedRoute(APIRoute):
    """An APIRoute that spends one of the source address's tokens (from
    `app.state.<LIMITER>`) before reading the request (429 when none is left)."""

    LIMITER = "login_limiter"
    WHAT = "logins"

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        attribute, what = self.LIMITER, self.WHAT

        async def limited_handler(request: Request) -> Response:
            limiter: RateLimiter | None = getattr(request.app.state, attribute, None)
            source = source_key(client_host(request))
            if limiter is not None and not limiter.allow(source):
                wait = max(1, math.ceil(limiter.retry_after(source)))
                raise HTTPException(
                    status_code=429,
                    detail=f"too many {what} from {source}: at most "
                    f"{limiter.rate:g} a second (burst {limiter.burst:g}); retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            return await handler(request)

        return limited_handler


class BootRoute(RateLimitedRoute):
    """A route of the boot path (devices booting over the network)."""

    LIMITER = "boot_limiter"
    WHAT = "boot requests"
