#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: once on a normal
# build, under valgrind's memcheck, once under AddressSanitizer +
# UndefinedBehaviorSanitizer, and a short run of every fuzz target.
# Its build directories (build-test, build-asan, build-fuzz) are its own:
# run.sh's build/ is configured without tests and is never reused here.
# A ctest run that finds no test fails (--no-tests=error).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)

./scripts/install-deps.sh --test
if [ -f tests/e2e/package.json ]; then
  (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "== build (RelWithDebInfo) =="
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLMUX_BUILD_TESTS=ON >/dev/null
cmake --build build-test -j"$JOBS"
echo "== tests =="
ctest --test-dir build-test --output-on-failure --no-tests=error -j"$JOBS" --timeout 300 \
  | tee build-test/ctest.log

echo "== valgrind (memcheck) =="
./scripts/valgrind.sh build-test

echo "== build (ASan + UBSan) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLLMUX_SANITIZE=ON -DLLMUX_BUILD_TESTS=ON >/dev/null
cmake --build build-asan -j"$JOBS"
echo "== tests under ASan + UBSan =="
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure --no-tests=error -j"$JOBS" --timeout 600 \
  | tee build-asan/ctest.log

echo "== fuzz (libFuzzer, ASan + UBSan): a short fixed run of every target =="
mkdir -p build-fuzz
./scripts/fuzz.sh | tee build-fuzz/summary.log

# One closing line for the whole run: every ctest entry of both builds and
# every fuzz target. Any failure above has already stopped the script.
count() { sed -n "$2" "$1" | tail -1; }
n_test=$(count build-test/ctest.log 's/.*tests passed, 0 tests failed out of \([0-9]*\).*/\1/p')
n_asan=$(count build-asan/ctest.log 's/.*tests passed, 0 tests failed out of \([0-9]*\).*/\1/p')
n_fuzz=$(count build-fuzz/summary.log 's/^fuzz: \([0-9]*\) passed, 0 failed$/\1/p')
total=$(( ${n_test:-0} + ${n_asan:-0} + ${n_fuzz:-0} ))
[ "$total" -gt 0 ] || { echo "test.sh: no test ran"; exit 1; }
echo "tests: $n_test (RelWithDebInfo) + $n_asan (ASan+UBSan) + $n_fuzz fuzz targets"
echo "$total passed, 0 failed"
