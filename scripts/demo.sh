#!/usr/bin/env bash
# demo.sh — build postino if needed, then copy a sample mailbox between two
# throw-away Dovecot servers and show the result (tests/integration/demo.py).
# Options: --full (the whole test corpus, 20 MB message included), --keep.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD_DIR:-build}
if [ ! -f "$BUILD/build.ninja" ]; then
  meson setup "$BUILD"
fi
ninja -C "$BUILD"
export POSTINO="$PWD/$BUILD/postino"
export POSTINO_SOURCE_ROOT="$PWD"
export PYTHONDONTWRITEBYTECODE=1
exec python3 tests/integration/demo.py "$@"
