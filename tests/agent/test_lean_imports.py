"""The agent runs on devices: loading it (and the CLI's agent verb) pulls in
no database driver, web framework or HTTP library. The `vdfarm agent`
command line itself is checked as a process, from what `python -X
importtime` says it imported (the running agent: tests/agent/test_agent_cli.py)."""

import subprocess
import sys

HEAVY = (
    "sqlalchemy",
    "fastapi",
    "httpx",
    "uvicorn",
    "pydantic",
    "rich",
    "vdfarm.stream",
    "vdfarm.service",
    "vdfarm.api",
    "vdfarm.cli.root",
)


def imported_modules(importtime_output: str) -> set[str]:
    """The module names `-X importtime` reported (its lines on stderr)."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_output.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    } - {"package"}  # the header line


def heavy_among(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_the_agent_loads_no_heavy_package():
    code = (
        "import sys, vdfarm.agent.run, vdfarm.agent.status\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_agent_command_line_loads_no_heavy_package(tmp_path):
    for args, code in (
        (["agent", "--help"], 0),
        (["agent", "status", "--help"], 0),
        (["agent", "status", "--listen", f"unix:{tmp_path}/none.sock"], 2),
        (["agent", "--device", "pc1"], 2),
    ):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "vdfarm", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == code, (args, out.stderr[-2000:])
        modules = imported_modules(out.stderr)
        assert "vdfarm.cli.agent" in modules, args
        assert heavy_among(modules) == [], args
        if code:  # still one error line, as from the full command tree
            errors = [line for line in out.stderr.splitlines() if line.startswith("vdfarm:")]
            assert len(errors) == 1 and errors[0].startswith("vdfarm: error:"), out.stderr


def test_the_full_command_tree_still_lists_the_agent():
    out = subprocess.run(
        [sys.executable, "-m", "vdfarm", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert any(line.split()[:1] == ["agent"] for line in out.stdout.splitlines()), out.stdout
