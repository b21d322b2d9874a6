#!/usr/bin/env bash
# Quick start, command 1: install what is needed, then run the demo (a data
# directory, a sample bootable vDisk, devices, a server, and a VM that boots
# from it over NBD).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/vdfarm --data-dir "${VDFARM_DEMO_DIR:-/var/lib/vdfarm-demo}" demo "$@"
