#!/usr/bin/env bash
# setup-and-demo.sh — on a fresh Debian/Ubuntu machine: install what is
# missing, build postino and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec scripts/demo.sh "$@"
