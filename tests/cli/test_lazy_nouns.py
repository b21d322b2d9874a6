"""The noun groups load when named: a verb of the database imports neither
the REST API's server nor FastAPI; `--help` still lists every noun."""

from __future__ import annotations

import re
import subprocess
import sys

from vdfarm.cli.root import NOUNS

HEAVY = ("fastapi", "uvicorn", "vdfarm.api.server", "vdfarm.cli.server")


# `vdfarm ARGS` in a fresh interpreter that names its modules on exit.
RUN_AND_LIST = """
import atexit, sys
atexit.register(lambda: print("MODULES", *sorted(sys.modules), file=sys.stderr))
sys.argv = ["vdfarm", *sys.argv[1:]]
from vdfarm.cli.main import main
main()
"""


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `vdfarm ARGS` in a new process; the modules it imported."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, *args], capture_output=True, text=True
    )
    listed = re.search(r"^MODULES (.*)$", proc.stderr, re.M)
    assert listed, proc.stderr
    return proc, set(listed.group(1).split())


def test_a_database_verb_never_loads_the_api_server(tmp_path):
    data = tmp_path / "data"
    init, _ = imported_modules("--data-dir", str(data), "init")
    assert init.returncode == 0, init.stderr
    listed, modules = imported_modules("--data-dir", str(data), "--json", "vdisk", "list")
    assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stdout
    assert "vdfarm.cli.vdisk" in modules and "sqlalchemy" in modules
    assert not [m for m in HEAVY if m in modules]
    assert not [m for m in modules if m.startswith("vdfarm.cli.") and m.endswith(".device")]


def test_help_lists_every_noun_and_an_unknown_one_is_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "-m", "vdfarm", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    listed = set(re.findall(r"^  (\w+)\s", proc.stdout, re.M))
    assert set(NOUNS) | {"init", "demo"} <= listed
    wrong = subprocess.run(
        [sys.executable, "-m", "vdfarm", "vdisks"], capture_output=True, text=True
    )
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "No such command 'vdisks'" in wrong.stderr
