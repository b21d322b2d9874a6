"""The /api/v1 routers, one module per noun (as in `vdfarm.cli`).

Rules: a route parses, calls ONE service method with `actor=api:<client>`
for changes, and returns what it returned; the token check is the router's
(`deps.make_router`), the error answers are the app's (`api.errors`).
"""
