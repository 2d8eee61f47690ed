#!/usr/bin/env bash
# run-tests.sh — configure a fresh build directory, build, run every test
# (unit and integration) and print "N passed, N failed" from meson's
# test log.  Exits non-zero if any test failed or none ran.
#   BUILD_DIR=build (default)   meson test arguments may follow, e.g.
#   scripts/run-tests.sh --suite integration
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD_DIR:-build}
rm -rf "$BUILD"
if ! meson setup "$BUILD"; then
  echo "meson setup failed"
  echo "0 passed, 1 failed"
  exit 1
fi
rc=0
meson test -C "$BUILD" --print-errorlogs "$@" || rc=$?
python3 scripts/count-results.py "$BUILD/meson-logs/testlog.json" || rc=1
exit "$rc"
