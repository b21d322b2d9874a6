"""iPXE scripts, as text: the one that boots a device (kernel, initrd,
boot) and the one that says why it cannot and tries again later.

Rules (pure: no I/O, no database):
- iPXE reads a script line by line; on a line it expands `${...}`
  settings and splits commands at `||` and `&&`. So nothing a client or
  an admin wrote reaches a script unchecked: URLs and kernel command lines
  must hold printable ASCII without `$`, `\\`, quotes, `#`, `||` or `&&`
  (`check_script_text`, else `UnsafeScriptText`; one `&` separates a URL's
  query parameters); a message for `echo` is made safe by replacing every
  `$`, `&`, `|`, `\\`, `#`, control or non-ASCII character with `?`
  (`echo_text`, which never raises).
- A refusal script echoes one line naming the reason, waits
  RETRY_SECONDS and chains the same URL again: a device waiting for an
  admin (an unknown MAC, no vDisk, no boot files) or for a server boots by
  itself once the farm can take it, without a person at its console.
- The device's parameters on the kernel command line are the ones the
  network-bootable sample's /init reads (vdfarm.server, vdfarm.export,
  vdfarm.id; `vdfarm.image.netboot`), plus `vdfarm.farm` (the farm's API
  URLs, comma-separated) for an initramfs that runs the agent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

RETRY_SECONDS = 15
MAX_ECHO = 200
_UNSAFE = re.compile(r"[^ !%'()*+,\-./0-9:;<=>?@A-Z\[\]^_`a-z{}~=]")
_SAFE_TEXT = re.compile(r"[ !%&()*+,\-./0-9:;<=>?@A-Z\[\]^_`a-z{}~=|]*")


class UnsafeScriptText(ValueError):
    """Text that iPXE would interpret, not copy."""


def check_script_text(what: str, text: str) -> str:
    """TEXT if it may stand in an iPXE script as it is (no `$`, `\\`,
    quote, `#`, control or non-ASCII character, no `||` or `&&`). Raises
    UnsafeScriptText naming WHAT."""
    if not _SAFE_TEXT.fullmatch(text):
        bad = next(c for c in text if not _SAFE_TEXT.fullmatch(c))
        raise UnsafeScriptText(
            f"{what} holds U+{ord(bad):04X}, a character an iPXE script would interpret"
        )
    for pair in ("||", "&&"):
        if pair in text:
            raise UnsafeScriptText(
                f"{what} holds two of U+{ord(pair[0]):04X}, which an iPXE script would interpret"
            )
    return text


def echo_text(message: str) -> str:
    """MESSAGE as one safe line for iPXE's `echo` (unsafe characters become
    `?`, at most MAX_ECHO characters)."""
    line = _UNSAFE.sub("?", message.replace("\n", " ").replace("$", "?"))
    line = line.replace("&", "?").replace("|", "?").replace("\\", "?").replace("#", "?")
    return line[:MAX_ECHO]


def device_params(
    server_host: str, nbd_port: int | None, export: str, farm_urls: Sequence[str]
) -> str:
    """The kernel parameters of one device's boot: its NBD server, its
    export (and id, for the markers), the farm's API URLs."""
    server = server_host if nbd_port is None else f"{server_host}:{nbd_port}"
    words = [f"vdfarm.server={server}", f"vdfarm.export={export}", f"vdfarm.id={export}"]
    if farm_urls:
        words.append(f"vdfarm.farm={','.join(farm_urls)}")
    return " ".join(words)


def boot_script(kernel_url: str, initrd_url: str | None, cmdline: str, say: str) -> str:
    """The script that boots: echo SAY, load the kernel with CMDLINE (and
    the initramfs), boot. Raises UnsafeScriptText (a URL or the command line)."""
    check_script_text("the kernel URL", kernel_url)
    check_script_text("the kernel command line", cmdline)
    lines = ["#!ipxe", f"echo vdfarm: {echo_text(say)}", f"kernel {kernel_url} {cmdline}".rstrip()]
    if initrd_url is not None:
        lines.append(f"initrd {check_script_text('the initramfs URL', initrd_url)}")
    lines.append("boot")
    return "\n".join(lines) + "\n"


def retry_script(reason: str, retry_url: str, seconds: int = RETRY_SECONDS) -> str:
    """The script that says REASON, waits SECONDS and chains RETRY_URL.
    Raises UnsafeScriptText (the URL)."""
    check_script_text("the retry URL", retry_url)
    return "\n".join(
        [
            "#!ipxe",
            f"echo vdfarm: {echo_text(reason)}",
            f"echo vdfarm: trying again in {int(seconds)} s",
            f"sleep {int(seconds)}",
            f"chain --autofree {retry_url}",
            "",
        ]
    )
