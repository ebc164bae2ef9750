#!/usr/bin/env bash
# The benchmark in one command: installs what is missing (nginx, wrk,
# gnuplot from Debian; the Portkey gateway from npm into bench/node_modules),
# builds llmux, the mock upstream and bench/streamload as Release, then runs
# bench/run.mjs, which writes bench/results/{results.json,results.md,latency.png},
# and bench/instructions.mjs, which counts instructions per request under
# callgrind (nginx, llmux bare, llmux on the production path), and per
# streamed token on the same streams, and writes
# bench/results/{instructions.md,instructions.json}.
#
#   bench/run.sh [--smoke] [--no-portkey] [--duration S] [--out DIR]
#
# LLMUX_BENCH_BUILD_DIR picks the build directory (default build-bench).
# A peer that cannot be installed is skipped with a line saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${LLMUX_BENCH_BUILD_DIR:-build-bench}
JOBS=$(nproc 2>/dev/null || echo 2)

./scripts/install-deps.sh
missing=()
for t in nginx:nginx wrk:wrk gnuplot:gnuplot-nox valgrind:valgrind; do
  command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "bench: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

portkey=1
icell=() # the instructions cell: fewer requests with --smoke, the same --out
prev=""
for a in "$@"; do
  [ "$a" = "--no-portkey" ] && portkey=0
  [ "$a" = "--smoke" ] && icell+=(--requests 200 --warmup 20)
  [ "$prev" = "--out" ] && icell+=(--out "$a")
  prev=$a
done
if [ $portkey = 1 ] && [ ! -f bench/node_modules/@portkey-ai/gateway/package.json ]; then
  (cd bench && npm ci --no-audit --no-fund --loglevel=error) ||
    echo "bench: could not install the Portkey gateway from npm; it will be skipped" >&2
fi

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j"$JOBS" --target llmux plugin_openai mock_upstream
cmake -S bench -B "$BUILD/bench-tools" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD/bench-tools" -j"$JOBS"

# 8,000 open streams through a proxy need 16,000 descriptors in it (and
# 8,000 in streamload and in the mock): every process started inherits the
# hard limit (the harness and those processes also raise their own).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 16500 ]; then
  echo "bench: only $(ulimit -n) descriptors per process; the 8,000 open streams need 16,500" >&2
fi
node bench/run.mjs --build-dir "$BUILD" "$@"
# Instructions per request under callgrind: nginx, llmux bare and llmux on
# the production path, the same requests to the same mock, then per streamed
# token (bench/README.md).
exec node bench/instructions.mjs --build-dir "$BUILD" ${icell[@]+"${icell[@]}"}
