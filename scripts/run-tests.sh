#!/usr/bin/env bash
# run-tests.sh — the whole test suite, twice: a normal build, then a build
# with AddressSanitizer and UndefinedBehaviorSanitizer (leaks checked, those
# inside libetpan suppressed: tests/lsan.supp). Each in a fresh build
# directory; ends with one line "N passed, N failed" over both passes.
# Exits non-zero if any test failed or none ran.
#   BUILD_DIR=build (default; the sanitizer build goes to BUILD_DIR-asan)
#   POSTINO_NO_SANITIZE=1 skips the second pass
#   POSTINO_NO_VALGRIND=1 skips the third: the unit suite under valgrind
#   (only run when no meson test arguments are given)
#   meson test arguments may follow, e.g.  scripts/run-tests.sh --suite unit
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD_DIR:-build}
ASAN_BUILD="$BUILD-asan"
logs=()
rc=0

run_pass() { # dir, label, meson setup args...
  local dir=$1 label=$2
  shift 2
  rm -rf "$dir"
  if ! meson setup "$dir" "$@"; then
    echo "meson setup failed ($label)"
    rc=1
    return
  fi
  echo "=== $label tests ==="
  meson test -C "$dir" --print-errorlogs "${TEST_ARGS[@]}" || rc=$?
  logs+=("$label=$dir/meson-logs/testlog.json")
}

TEST_ARGS=("$@")
run_pass "$BUILD" plain
if [ "${POSTINO_NO_SANITIZE:-}" != 1 ]; then
  export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=86
  export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  run_pass "$ASAN_BUILD" sanitize -Db_sanitize=address,undefined -Db_lundef=false
fi
if [ "${POSTINO_NO_VALGRIND:-}" != 1 ] && [ "${#TEST_ARGS[@]}" -eq 0 ] &&
   command -v valgrind >/dev/null; then
  echo "=== valgrind unit tests ==="
  meson test -C "$BUILD" --setup valgrind --suite unit --no-suite slow --print-errorlogs \
    --logbase testlog-valgrind || rc=$?
  # meson adds the setup's name to the log's base name
  logs+=("valgrind=$BUILD/meson-logs/testlog-valgrind-valgrind.json")
fi
python3 scripts/count-results.py "${logs[@]}" || rc=1
exit "$rc"
