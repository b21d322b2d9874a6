"""vdfarm.nbd stays a pure protocol package (the h11 rule)."""

from __future__ import annotations

import subprocess
import sys


def test_the_protocol_package_loads_no_io_module():
    code = (
        "import sys, vdfarm.nbd.server; "
        "print([m for m in ('socket', 'asyncio', 'threading', 'selectors') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
