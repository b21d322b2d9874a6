"""The daemon: the one place that assembles a vdfarm server process.

It receives the Farm the CLI opened, builds the stream server over the
farm's port, and runs the NBD listener, the REST API and the periodic work
as named tasks under one supervisor (see run.py for the task list,
supervisor.py for start, stop and death). Nothing else in vdfarm imports it
but the CLI's `server run`.
"""
