"""Benchmark: reads through a 5-deep version chain vs the same content
flattened to raw, and merging that chain vs qemu-img doing it.

Job: build a vDisk (random 2 GiB base) with five production versions, each
a qcow2 delta written through vdfarm's maintenance path (qemu-io over NBD);
flatten it with `qemu-img convert` and import that as a second vDisk; then
1. fio (nbd engine) 4 KiB random read qd32 and 1 MiB sequential read qd8 on
   a production device of each, interleaved in rounds: ratio chain / flat;
2. `vdfarm version merge` (folds v1..v4 into v5 on the base) vs the same
   fold by hand with qemu-img (`qemu-img rebase` of a copy of v5 onto the
   base) and vs `qemu-img convert -O raw` of the whole chain (flattening).

Usage: .venv/bin/python bench/versions_bench.py [--size-mib 2048] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nbd_bench import fio, free_port, make_image, wait_port  # noqa: E402

VDFARM = [sys.executable, "-m", "vdfarm"]


def vdfarm(env, *args: str) -> str:
    return subprocess.run(
        VDFARM + list(args), check=True, env=env, capture_output=True, text=True
    ).stdout


def write_version(uri: str, size: int, seed: int, writes: int = 48) -> None:
    """Scattered 1 MiB writes (and a few 4 KiB ones) into a maintenance version."""
    rng = random.Random(seed)
    cmds: list[str] = []
    for _ in range(writes):
        off = rng.randrange(0, size // (1 << 20)) << 20
        cmds += ["-c", f"write -P {rng.randrange(1, 255)} {off} 1M"]
    for _ in range(256):
        off = rng.randrange(0, size // 4096) * 4096
        cmds += ["-c", f"write -P {rng.randrange(1, 255)} {off} 4k"]
    subprocess.run(
        ["qemu-io", "-f", "raw", *cmds, "-c", "flush", uri], check=True, stdout=subprocess.DEVNULL
    )


def timed(argv, **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=8)
    args = ap.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="vdfarm-vbench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        data = work / "data"
        env = dict(os.environ, VDFARM_DATA_DIR=str(data))
        image = work / "base.raw"
        make_image(image, args.size_mib)
        vdfarm(env, "init")
        vdfarm(env, "vdisk", "import", "chain", str(image), "--mode", "standard")
        vdfarm(env, "vdisk", "set", "chain", "--max-versions", "20")
        vdfarm(env, "device", "add", "maint", "--vdisk", "chain", "--type", "maintenance")
        vdfarm(env, "device", "add", "reader", "--vdisk", "chain")
        port = free_port()
        server = subprocess.Popen(
            VDFARM + ["server", "run", "--nbd-port", str(port), "--grace", "0", "--no-api"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, server)
            print("building a 5-deep chain through the maintenance path ...", flush=True)
            for v in range(1, 6):
                vdfarm(env, "version", "new", "chain")
                write_version(f"nbd://127.0.0.1:{port}/maint", size, seed=v)
                vdfarm(env, "version", "promote", "chain", "--to", "test")
                vdfarm(env, "version", "promote", "chain", "--to", "production")
            store = data / "store" / "chain"
            top = sorted(store.glob("v*.qcow2"))[-1]
            flat = work / "flat.raw"
            flatten_s = timed(["qemu-img", "convert", "-O", "raw", str(top), str(flat)])
            vdfarm(env, "vdisk", "import", "flat", str(flat), "--mode", "standard")
            vdfarm(env, "device", "add", "flatreader", "--vdisk", "flat")
            subprocess.run(
                [
                    "qemu-img",
                    "compare",
                    "-f",
                    "raw",
                    "-F",
                    "raw",
                    f"nbd://127.0.0.1:{port}/reader",
                    str(flat),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            results: dict[tuple[str, str], list[float]] = {}
            for rnd in range(args.rounds):
                for job, rw, bs, depth, metric in (
                    ("randread-4k-qd32", "randread", "4k", 32, "iops"),
                    ("seqread-1m-qd8", "read", "1m", 8, "mibps"),
                ):
                    for dev in ("reader", "flatreader"):
                        value = fio(
                            f"nbd://127.0.0.1:{port}/{dev}", rw, bs, depth, args.runtime, size
                        )[metric]
                        results.setdefault((dev, job), []).append(value)
                        print(
                            f"round {rnd + 1} {dev:10} {job:18} {value:10.1f} {metric}", flush=True
                        )
            # merge: by hand with qemu-img on a copy, then vdfarm
            manual = work / "manual"
            manual.mkdir()
            for f in store.iterdir():
                if f.suffix in (".raw", ".qcow2"):
                    shutil.copy(f, manual / f.name)  # not timed
            mtop = manual / top.name
            rebase_s = timed(
                ["qemu-img", "rebase", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mtop.name],
                cwd=manual,
            )
        finally:
            server.terminate()
            server.wait(30)
        merge_s = timed(VDFARM + ["version", "merge", "chain"], env=env)
        versions = json.loads(vdfarm(env, "--json", "version", "list", "chain"))
    print()
    print(
        f"image {args.size_mib} MiB, 5 versions; {args.rounds} rounds; "
        f"ratios are medians of same-round ratios"
    )
    for job in ("randread-4k-qd32", "seqread-1m-qd8"):
        r = statistics.median(
            a / b
            for a, b in zip(results[("reader", job)], results[("flatreader", job)], strict=True)
        )
        print(
            f"{job:18} chain {statistics.median(results[('reader', job)]):10.0f}  "
            f"flat {statistics.median(results[('flatreader', job)]):10.0f}  "
            f"chain/flat {r:.2f}"
        )
    print(
        f"merge: vdfarm version merge {merge_s:.2f} s; qemu-img rebase (same fold) "
        f"{rebase_s:.2f} s -> {merge_s / rebase_s:.2f}x; qemu-img convert to raw "
        f"{flatten_s:.2f} s -> {merge_s / flatten_s:.2f}x"
    )
    print(f"versions after merge: {[v.get('number') for v in versions]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
