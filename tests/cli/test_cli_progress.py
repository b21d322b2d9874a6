"""Every slow verb reports its progress (vdfarm.cli.progress) on stderr as
plain lines when asked to (`VDFARM_PROGRESS=plain`, what a pipe gets), and
nothing with --json or `none`; a bad `VDFARM_PROGRESS` is a usage error."""

from __future__ import annotations

import json
import re

from tests.cli.conftest import assert_one_line_error
from tests.cli.test_cli_version import new_written
from tests.service.helpers import make_raw

PLAIN = {"VDFARM_PROGRESS": "plain"}
LINE = re.compile(r"^(\w+) w \((\w+)\): .* \((\d+) %\)")


def _steps(stderr):
    """The (verb, step) of each progress line, and the last percent of each."""
    found = [LINE.match(line) for line in stderr.splitlines()]
    assert all(found), stderr
    last = {(m.group(1), m.group(2)): int(m.group(3)) for m in found}
    return [(m.group(1), m.group(2)) for m in found], last


def test_each_slow_verb_reports_each_pass(icli, tmp_path):
    imported = icli("vdisk", "import", "w", str(make_raw(tmp_path / "w.raw", 8 << 20)), env=PLAIN)
    assert imported.exit_code == 0 and imported.stdout.startswith("imported vDisk w ")
    _, last = _steps(imported.stderr)
    assert last == {("import", "copy"): 100, ("import", "hash"): 100}

    new_written(icli, 0x11)
    promoted = icli("version", "promote", "w", "--to", "test", env=PLAIN)
    assert promoted.exit_code == 0, promoted.stderr
    assert _steps(promoted.stderr)[1] == {("promote", "hash"): 100}
    icli.ok("version", "promote", "w", "--to", "production")
    new_written(icli, 0x22)
    icli.ok("version", "promote", "w", "--to", "production")

    merged = icli("version", "merge", "w", env=PLAIN)
    assert merged.exit_code == 0, merged.stderr
    assert merged.stdout.startswith("merged version(s) 1 of vDisk w")
    assert _steps(merged.stderr)[1] == {("merge", "merge"): 100, ("merge", "hash"): 100}

    verified = icli("vdisk", "verify", "w", env=PLAIN)
    assert verified.stdout == "vDisk w is intact\n"
    assert _steps(verified.stderr)[1] == {("verify", "hash"): 100}

    out = tmp_path / "w.qcow2"
    exported = icli("vdisk", "export", "w", str(out), "--format", "qcow2", env=PLAIN)
    assert exported.exit_code == 0 and out.is_file()
    assert _steps(exported.stderr)[1] == {("export", "copy"): 100}

    quiet = icli("--json", "vdisk", "verify", "w", env=PLAIN)
    assert quiet.stderr == "" and json.loads(quiet.stdout)["ok"] is True
    silent = icli("vdisk", "verify", "w", env={"VDFARM_PROGRESS": "none"})
    assert silent.stderr == "" and silent.stdout == "vDisk w is intact\n"


def test_a_bad_progress_mode_is_a_usage_error(icli, tmp_path):
    before = icli.dump()
    result = icli(
        "vdisk", "import", "w", str(make_raw(tmp_path / "w.raw")), env={"VDFARM_PROGRESS": "fancy"}
    )
    assert_one_line_error(result, 2, "VDFARM_PROGRESS must be one of auto, bar, plain, none")
    assert icli.dump() == before
