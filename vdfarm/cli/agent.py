"""`vdfarm agent …`: run the device agent; `vdfarm agent status`: show it.

Rules: flags, help and output only; the agent (vdfarm.agent) is imported
when a verb runs, so `vdfarm --help` never loads it. This module imports
click and the standard library only: `vdfarm agent …` runs this group
alone (vdfarm.cli.main), without the rest of the command tree. Bad input (no
reachable farm, an unknown device, a URL that is no vdfarm farm, a bad
--listen) is one error line and exit 2.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--farm",
    "farm_urls",
    metavar="URL[,URL…]",
    help="Login URLs of the farm (http(s)://HOST:API_PORT), tried in turn.",
)
@click.option("--device", metavar="NAME", help="This device's name in the farm.")
@click.option("--listen", metavar="ADDR", help="unix:/run/vdfarm/NAME.sock or tcp:127.0.0.1:PORT.")
@click.option(
    "--io-timeout",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds a request may go unanswered before its server counts as failed.",
)
@click.option(
    "--give-up",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds without any server before waiting I/O gets EIO [default: never].",
)
@click.option(
    "--cache-size",
    "cache_size_mib",
    type=click.IntRange(min=0),
    default=256,
    show_default=True,
    help="MiB of RAM for a device-side write cache.",
)
@click.option(
    "--cache-disk-size",
    "cache_disk_mib",
    type=click.IntRange(min=0),
    default=None,
    help="MiB of the disk file of a device-disk or device-ram-overflow write cache "
    "[default: the vDisk's size; the file is sparse].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for a device-disk (or RAM-overflow) write cache file.",
)
@click.option("--tls-ca", default=None, metavar="PEM", help="The farm's CA: NBD over TLS.")
@click.option("--tls-cert", default=None, metavar="PEM", help="This device's certificate.")
@click.option("--tls-key", default=None, metavar="PEM", help="This device's private key.")
@click.option(
    "--ca-file", default=None, metavar="PEM", help="Trust only this CA for https:// farm URLs."
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="API token file, used to report failovers to the farm.",
)
@click.option(
    "--status-file",
    default=None,
    metavar="PATH",
    help="Status file [default: SOCKET.status.json, or /run/vdfarm/agent-PORT.json for tcp].",
)
@click.pass_context
def agent(
    ctx: click.Context,
    farm_urls: str | None,
    device: str | None,
    listen: str | None,
    io_timeout: float,
    give_up: float | None,
    cache_size_mib: int,
    cache_disk_mib: int | None,
    cache_dir: Path | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    ca_file: str | None,
    token_file: Path | None,
    status_file: str | None,
) -> None:
    """Run the device agent: an NBD server for this device's own client that
    streams from the farm and fails over between its servers."""
    if ctx.invoked_subcommand is not None:
        return
    from vdfarm.agent.local import ListenError, parse_listen
    from vdfarm.agent.run import AgentError, AgentOptions, run_agent
    from vdfarm.agent.upstream import TLSFiles

    missing = [
        n for n, v in (("--farm", farm_urls), ("--device", device), ("--listen", listen)) if not v
    ]
    if missing:
        raise click.UsageError(f"vdfarm agent needs {', '.join(missing)}")
    assert farm_urls and device and listen
    urls = tuple(u.strip() for u in farm_urls.split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise click.UsageError(f"--farm {url!r} is not an http:// or https:// URL")
    if (tls_cert is None) != (tls_key is None) or (tls_cert and not tls_ca):
        raise click.UsageError("--tls-cert and --tls-key go together, with --tls-ca")
    try:
        address = parse_listen(listen)
    except ListenError as exc:
        raise click.UsageError(str(exc)) from exc
    token = None
    if token_file is not None:
        try:
            token = token_file.read_text().strip() or None
        except OSError as exc:
            raise click.UsageError(f"--token-file: {exc}") from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    options = AgentOptions(
        farm_urls=urls,
        device=device,
        listen=address,
        io_timeout=io_timeout,
        give_up=give_up,
        cache_size_mib=cache_size_mib,
        cache_disk_mib=cache_disk_mib,
        cache_dir=cache_dir,
        tls=TLSFiles(tls_ca, tls_cert, tls_key) if tls_ca else None,
        login_ca=ca_file,
        token=token,
        status_file=status_file,
    )
    try:
        run_agent(options)
    except AgentError as exc:
        raise click.UsageError(str(exc)) from exc


@agent.command("status")
@click.option("--listen", required=True, metavar="ADDR", help="The agent's --listen address.")
@click.option("--status-file", default=None, metavar="PATH", help="The agent's --status-file.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_cmd(listen: str, status_file: str | None, as_json: bool) -> None:
    """Show a running agent's status: server, failovers and pauses, cache."""
    from vdfarm.agent.local import ListenError, parse_listen
    from vdfarm.agent.status import StatusUnavailable, read_status, status_lines, status_path

    try:
        status = read_status(status_path(parse_listen(listen), status_file))
    except (ListenError, StatusUnavailable) as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        for line in status_lines(status):
            click.echo(line)
