"""The agent runs on devices: loading it (and the CLI's agent verb) pulls in
no database driver, web framework or HTTP library."""

import subprocess
import sys

HEAVY = ("sqlalchemy", "fastapi", "httpx", "uvicorn", "pydantic", "vdfarm.stream", "vdfarm.service")


def test_the_agent_loads_no_heavy_package():
    code = (
        "import sys, vdfarm.agent.run, vdfarm.agent.status\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
