#!/usr/bin/env bash
# Quick start, command 2: install what the tests need, run the checks
# (scripts/check.sh: lint, format, types, import contracts), then the tests.
# Starts the installed PostgreSQL cluster if it is not running (tests that
# need PostgreSQL skip, saying why, when there is none). Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
if command -v pg_ctlcluster >/dev/null 2>&1; then
  for conf in /etc/postgresql/*/main; do
    [ -d "$conf" ] || continue
    version=$(basename "$(dirname "$conf")")
    if ! pg_ctlcluster "$version" main status >/dev/null 2>&1; then
      echo "starting PostgreSQL $version/main"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi
  done
fi
bash scripts/check.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
