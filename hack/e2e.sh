#!/usr/bin/env bash
# e2e.sh runs the end-to-end scenarios in a QEMU virtual machine with the real
# kernel nbd driver (test/e2e/vm). Arguments are passed on: scenario names
# (default: all), -n N to repeat each, --list.
set -euo pipefail
exec "$(dirname "$0")/../test/e2e/vm/run.sh" "$@"
