"""Replication: every server's store pulls every visible version from a peer.

This package is the wire and the copy of one file (`fetch`, `throttle`);
the daemon's replication task decides what to fetch and when. It sits on
the floor of `api` and `client`: it imports the store (to receive files)
and httpx (to talk to peers' REST APIs), never the stream or the daemon.
"""
