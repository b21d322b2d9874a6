"""Assembling and running one vdfarm server process (`vdfarm server run`).

Rules:
- `TASKS` is the server's task list, in start order: one factory per task,
  each taking the ServerParts and returning a Task (or None when the
  options switch it off). A new task (replication, boot files, console) is
  one new module with its factory plus one line here; its stop phase (see
  supervisor.py) places it in the shutdown.
- The daemon opens nothing the CLI already opened: it receives the Farm,
  and the CLI closes it. It builds the stream server over the farm's port
  (farm_port.ServiceFarmPort) and hands every task to one Supervisor.
- What the process prints is what people and tests wait for: "vdfarm:
  serving NBD on HOST:PORT[, REST API on HOST:PORT] (data dir DIR)" once
  every task has started, "vdfarm: stopped" after a clean stop. A task that
  died makes `run_server` return 1 (the supervisor's last log line names
  the task); a clean stop returns 0.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable, Sequence

from vdfarm.daemon import farm_tasks, logs, replication_task, stream_tasks
from vdfarm.daemon.farm_port import ServiceFarmPort
from vdfarm.daemon.parts import ServerOptions, ServerParts
from vdfarm.daemon.supervisor import EXIT_TASK_DIED, Supervisor, Task
from vdfarm.nbd.tls_config import TLSSettings
from vdfarm.service.context import Farm
from vdfarm.service.errors import ServiceError
from vdfarm.stream.runtime_dirs import ram_cache_dir
from vdfarm.stream.server import StreamServer
from vdfarm.stream.tls import server_context

log = logging.getLogger("vdfarm.daemon")

TaskFactory = Callable[[ServerParts], Task | None]

# The server's tasks, in start order (shutdown follows the stop phases).
TASKS: tuple[TaskFactory, ...] = (
    stream_tasks.executors,
    stream_tasks.sessions,
    farm_tasks.local_store,
    stream_tasks.nbd_listener,
    farm_tasks.rest_api,
    farm_tasks.heartbeat,
    stream_tasks.move_orders,
    stream_tasks.cache_usage,
    stream_tasks.reconcile,
    farm_tasks.audit_retention,
    farm_tasks.auto_rebalance,
    replication_task.replication,
)


def check_nbd_tls(settings: TLSSettings) -> None:
    """Read the NBD TLS files of SETTINGS once, so `server run` can refuse
    them in one line before anything starts.

    Raises TLSFilesError.
    """
    server_context(settings)


def build_parts(farm: Farm, options: ServerOptions) -> ServerParts:
    """The stream server over FARM's port, and what the tasks share.

    Raises TLSFilesError (the NBD TLS files cannot be used).
    """
    stream = StreamServer(
        ServiceFarmPort(farm),
        farm.cache_dir,
        grace_seconds=options.grace_seconds,
        lease_seconds=options.lease_seconds,
        ram_cache_dir=ram_cache_dir(farm.server_uuid, farm.cache_dir),
        limits=options.nbd_limits,
        tls=options.nbd_tls,
    )
    return ServerParts(farm=farm, stream=stream, options=options)


def build_tasks(parts: ServerParts, factories: Sequence[TaskFactory] = TASKS) -> list[Task]:
    """The tasks FACTORIES make of PARTS, in order, the switched-off left out."""
    return [task for make in factories if (task := make(parts)) is not None]


def serving_line(parts: ServerParts) -> str:
    """The line that says the server is up, where, and on which data dir."""
    options = parts.options
    api = f", REST API on {parts.api_host}:{parts.api_port}" if parts.api_port is not None else ""
    return (
        f"vdfarm: serving NBD on {options.host}:{parts.nbd_port}{api} "
        f"(data dir {parts.farm.data_dir})"
    )


async def serve(farm: Farm, options: ServerOptions, extra_tasks: Sequence[TaskFactory] = ()) -> int:
    """Run the server's tasks (then EXTRA_TASKS) until SIGTERM/SIGINT or a
    task dies; return the exit status (0: stopped by a signal).

    Raises what a task's start raised (cannot bind, database away at
    registration), after stopping the tasks started before it.
    """
    parts = build_parts(farm, options)
    supervisor = Supervisor(build_tasks(parts, (*TASKS, *extra_tasks)))

    def ready() -> None:
        print(serving_line(parts), flush=True)

    status = await supervisor.run(on_ready=ready)
    if status == 0:
        print("vdfarm: stopped", flush=True)
    return status


def _tune_malloc() -> None:
    """Keep big read buffers on the heap instead of fresh mmaps: glibc's
    default maps each buffer over 128 KiB anew and page-faults it in, which
    costs more than the read itself. Best effort: other libcs are left as is."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 256 * 1024 * 1024)


def run_server(farm: Farm, options: ServerOptions, extra_tasks: Sequence[TaskFactory] = ()) -> int:
    """Foreground entry point of `vdfarm server run`: logging to stderr,
    uvloop, `serve`. Returns the exit status: 0 after SIGTERM/SIGINT, 1 when
    a task died or could not start (logged, with the task's name).

    Raises ServiceError when the farm refused a start (database away at
    registration): the CLI shows its one line.
    """
    _tune_malloc()
    logs.configure()
    try:
        import uvloop

        runner: Callable[..., int] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        return runner(serve(farm, options, extra_tasks))
    except ServiceError:  # the CLI shows it as its one error line
        raise
    except Exception as exc:  # a task could not start (logged with its name)
        log.error("server not started: %s", exc)
        return EXIT_TASK_DIED
