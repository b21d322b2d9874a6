"""The REST API: the second thin front end over `vdfarm.service` (the CLI is the first).

Rules: routes hold paths, bodies and status codes only; every decision is
the service's. `create_app(farm)` (in `vdfarm.api.app`) builds the app,
`serve_api` (in `vdfarm.api.server`) runs it inside an existing asyncio loop.
This package's `__init__` imports nothing, so `vdfarm.api.auth` (stdlib only)
can be used without loading FastAPI.
"""
