#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan+UBSan) in
# build-fuzz/ and runs each over its checked-in corpus.
#
#   scripts/fuzz.sh [RUNS] [TARGET...]      each target RUNS inputs (default 50000;
#                                           fixed seed, fresh working corpus)
#   scripts/fuzz.sh --long SECONDS [TARGET...]
#                                           each target for SECONDS, keeping what it
#                                           learns in build-fuzz/fuzz-work/TARGET
#
# Targets run two at a time (or one per core). The checked-in corpus
# (tests/fuzz/corpus/TARGET) is only read; new inputs go to the working
# corpus. A crash, leak, sanitizer report or hang fails the run and leaves its
# reproducer in build-fuzz/fuzz-artifacts/TARGET/; replay it with
# `build-fuzz/fuzz/TARGET FILE`, and once understood check it in as
# tests/fuzz/corpus/TARGET/crash-SHORT-DESCRIPTION. Prints, per target, the
# inputs run, the seconds taken, executions per second and the coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${LLMUX_FUZZ_BUILD:-build-fuzz}
JOBS=$(nproc 2>/dev/null || echo 2)
ALL=(fuzz_json_scan fuzz_ratelimit_headers fuzz_http_front_door fuzz_upstream_response
     fuzz_plugin_openai fuzz_plugin_anthropic fuzz_plugin_ollama fuzz_inbound)

long=0
runs=50000
if [ "${1:-}" = "--long" ]; then
  long=1
  secs=${2:?usage: scripts/fuzz.sh --long SECONDS [TARGET...]}
  shift 2
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  runs=$1
  shift
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

./scripts/install-deps.sh --test
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DLLMUX_FUZZ=ON -DLLMUX_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$BUILD" --target "${targets[@]}" -j"$JOBS" >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
logs="$BUILD/fuzz-logs"
mkdir -p "$logs"

run_one() { # run_one TARGET: exit status of the fuzzer, log in $logs/TARGET.log
  local t=$1 work="$BUILD/fuzz-work/$t" art="$BUILD/fuzz-artifacts/$t/"
  local args=(-max_len=8192 -timeout=20 -rss_limit_mb=2048 -print_final_stats=1
              -artifact_prefix="$art")
  if [ $long = 1 ]; then
    args+=(-max_total_time="$secs")
  else
    rm -rf "$work"
    args+=(-runs="$runs" -seed=1)
  fi
  mkdir -p "$work" "$art"
  "$BUILD/fuzz/$t" "${args[@]}" "$work" "tests/fuzz/corpus/$t" >"$logs/$t.log" 2>&1
}

pids=()
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  ( start=$(date +%s.%N); rc=0; run_one "$t" || rc=$?
    echo "$rc $start $(date +%s.%N)" >"$logs/$t.status" ) &
  pids+=($!)
done
wait "${pids[@]}" || true

failed=0
printf '%-24s %10s %8s %9s %6s  %s\n' target runs seconds exec/s cov result
npass=0
for t in "${targets[@]}"; do
  read -r rc start end <"$logs/$t.status"
  wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  done_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' "$logs/$t.log" | tail -1)
  result=ok
  if [ "$rc" = 0 ]; then
    npass=$((npass + 1))
  else
    failed=1
    unit=$(sed -n "s/.*Test unit written to //p" "$logs/$t.log" | tail -1)
    result="FAILED (exit $rc): ${unit:-see $logs/$t.log}"
  fi
  printf '%-24s %10s %8s %9s %6s  %s\n' "$t" "${done_runs:-?}" "$wall" \
    "$(awk -v n="${done_runs:-0}" -v s="$wall" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')" \
    "${cov:-?}" "$result"
done
if [ $failed = 1 ]; then
  echo "fuzz: a target failed; the reports are in $logs/" >&2
  for t in "${targets[@]}"; do
    read -r rc _ <"$logs/$t.status"
    [ "$rc" = 0 ] || grep -m1 -E 'ERROR|fuzz check failed|runtime error' "$logs/$t.log" >&2 || true
  done
fi
echo "fuzz: $npass passed, $((${#targets[@]} - npass)) failed"
[ $failed = 0 ]
