"""The farm as a front end drives it: local (`client.local.LocalFarm`, over
an open Farm) or remote (`client.farm.FarmClient`, over a server's REST API
with httpx), with one interface.

Rules: both answer with the service layer's records and raise its errors,
so the CLI prints either the same way. Nothing is imported here: a local
command never loads httpx.
"""
