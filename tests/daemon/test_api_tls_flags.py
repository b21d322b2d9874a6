"""`vdfarm server run --api-tls-cert/--api-tls-key`: the real server
process serves its REST API over HTTPS, the CLI reaches it with --ca-file,
and unusable files are one line before anything starts."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.api.tls import make_tls_files
from tests.conftest import VDFARM, free_port, wait_port


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_server_run_serves_the_api_over_https(farm, tls):
    api_port = free_port()
    with open(farm.log_path, "ab") as log:
        proc = subprocess.Popen(
            farm.base_args()
            + ["server", "run", "--nbd-port", str(free_port()), "--api-port", str(api_port)]
            + ["--api-tls-cert", str(tls.cert), "--api-tls-key", str(tls.key)],
            stdout=log,
            stderr=log,
        )
    farm.server = proc
    wait_port(api_port, proc)
    token = (farm.data_dir / "api-token").read_text().strip()
    remote = VDFARM + ["--farm", f"https://127.0.0.1:{api_port}", "--token", token]
    deadline = time.monotonic() + 10
    while True:  # the API may answer a moment after its port opens
        ok = subprocess.run(
            [*remote, "--ca-file", str(tls.ca), "--json", "server", "list"],
            capture_output=True,
            text=True,
        )
        if ok.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ok.returncode == 0, ok.stderr
    [me] = json.loads(ok.stdout)
    assert me["api_port"] == api_port and me["api_tls"] is True  # peers replicate over HTTPS
    wrong = subprocess.run(
        [*remote, "--ca-file", str(tls.other_ca), "server", "list"], capture_output=True, text=True
    )
    assert wrong.returncode != 0 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    plain = subprocess.run(
        VDFARM + ["--farm", f"http://127.0.0.1:{api_port}", "--token", token, "server", "list"],
        capture_output=True,
        text=True,
    )
    assert plain.returncode != 0  # no plain HTTP on the TLS port


def test_unusable_tls_files_are_one_line_before_anything_starts(farm, tls, tmp_path):
    missing = tmp_path / "missing.pem"
    for extra in (
        ["--api-tls-cert", str(missing)],
        ["--api-tls-cert", str(tls.cert), "--api-tls-key", str(tls.other_ca)],
        ["--api-tls-key", str(tls.key)],
    ):
        run = farm.cli(
            "server", "run", "--nbd-port", str(free_port()), "--api-port", "0", *extra, check=False
        )
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vdfarm: error: "), run.stderr
        assert "serving NBD" not in run.stdout


def test_server_run_confines_api_exports_to_its_transfer_dir(farm, test_image, tmp_path):
    farm.cli("vdisk", "import", "golden", str(test_image))
    transfer = tmp_path / "transfer-here"
    api_port = free_port()
    with open(farm.log_path, "ab") as log:
        proc = subprocess.Popen(
            farm.base_args()
            + ["server", "run", "--nbd-port", str(free_port()), "--api-port", str(api_port)]
            + ["--transfer-dir", str(transfer)],
            stdout=log,
            stderr=log,
        )
    farm.server = proc
    wait_port(api_port, proc)
    token = (farm.data_dir / "api-token").read_text().strip()
    remote = VDFARM + ["--farm", f"http://127.0.0.1:{api_port}", "--token", token]
    deadline = time.monotonic() + 10
    while True:
        done = subprocess.run(
            [*remote, "vdisk", "export", "golden", "copy.raw", "--format", "raw"],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert done.returncode == 0, done.stderr
    exported = transfer / "copy.raw"
    assert exported.read_bytes() == test_image.read_bytes()
    assert exported.stat().st_mode & 0o777 == 0o600
    outside = subprocess.run(
        [*remote, "vdisk", "export", "golden", str(tmp_path / "outside.raw"), "--format", "raw"],
        capture_output=True,
        text=True,
    )
    assert outside.returncode != 0 and "outside the transfer directory" in outside.stderr
    assert not (tmp_path / "outside.raw").exists()
