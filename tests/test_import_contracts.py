"""The import contracts of pyproject.toml catch a bad import: each case adds
one import that breaks a floor to a scratch copy of the tree and expects
`lint-imports` to fail naming the contract (on the real tree,
scripts/check.sh runs it before the tests)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def scratch_copy(dest: Path) -> Path:
    shutil.copytree(ROOT / "vdfarm", dest / "vdfarm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def lint_imports(where: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(where))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "module, bad_import, contract",
    [
        ("vdfarm/nbd/wire.py", "import vdfarm.service.errors", "Floors"),
        ("vdfarm/block/layer.py", "import vdfarm.nbd.constants", "Floors"),
        ("vdfarm/farm/placement.py", "import vdfarm.service.errors", "Floors"),
        ("vdfarm/service/errors.py", "import vdfarm.stream.port", "Floors"),
        ("vdfarm/stream/flags.py", "import vdfarm.farm.models", "The stream reaches the farm"),
        ("vdfarm/api/errors.py", "import vdfarm.stream.port", "Only the daemon"),
        ("vdfarm/replication/rate.py", "import vdfarm.api.ranges", "Floors"),
        ("vdfarm/replication/rate.py", "import vdfarm.stream.port", "Only the daemon"),
        ("vdfarm/service/audit.py", "import vdfarm.service.context", "No import circles"),
        ("vdfarm/stream/flags.py", "import vdfarm.stream.server", "No import circles"),
        ("vdfarm/agent/identity.py", "import vdfarm.farm.models", "The device agent imports only"),
        ("vdfarm/agent/identity.py", "import vdfarm.stream.flags", "The device agent imports only"),
        ("vdfarm/agent/identity.py", "import vdfarm.service.errors", "Floors"),
        ("vdfarm/agent/identity.py", "import vdfarm.api.errors", "Floors"),
        ("vdfarm/boot/inputs.py", "import vdfarm.farm.models", "Floors"),
        ("vdfarm/boot/dnsmasq.py", "import vdfarm.nbd.constants", "Floors"),
    ],
)
def test_a_bad_import_breaks_its_contract(tmp_path, module, bad_import, contract):
    where = scratch_copy(tmp_path)
    assert lint_imports(where).returncode == 0  # the copy as it is keeps every contract
    target = where / module
    target.write_text(target.read_text() + f"\n{bad_import}  # a deliberate breach\n")
    result = lint_imports(where)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
