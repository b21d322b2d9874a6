#!/usr/bin/env bash
# The house's rules as checks, run before the tests (scripts/test.sh) and by
# hand: lint (ruff), formatting (ruff format), types (mypy: strict for the
# protocol, the block layers, the farm models and the stream's port), and the
# import contracts of docs/architecture.md (import-linter). Exits non-zero on
# the first failing check, naming it. Needs `scripts/install.sh --test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
# A worktree without its own venv: the tools on PATH (e.g. another checkout's venv).
[ -x "$bin/ruff" ] || bin=$(dirname "$(command -v ruff)")
step() { echo "check: $*"; }
step "ruff check";         "$bin/ruff" check --quiet .
step "ruff format --check"; "$bin/ruff" format --check --quiet .
step "mypy";               "$bin/mypy" --no-error-summary
step "import contracts"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$bin/lint-imports" --no-cache > "$out" 2>&1 || { grep -v '^[╔╚║ ]' "$out"; exit 1; }
echo "check: all passed"
