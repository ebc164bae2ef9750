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
ctest --test-dir build-test --output-on-failure --no-tests=error -j"$JOBS" --timeout 300

echo "== valgrind (memcheck) =="
./scripts/valgrind.sh build-test

echo "== build (ASan + UBSan) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLLMUX_SANITIZE=ON -DLLMUX_BUILD_TESTS=ON >/dev/null
cmake --build build-asan -j"$JOBS"
echo "== tests under ASan + UBSan =="
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure --no-tests=error -j"$JOBS" --timeout 600
