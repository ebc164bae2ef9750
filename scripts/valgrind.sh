#!/usr/bin/env bash
# Runs the pure-logic unit tests, the plugin translation tests (each plugin
# dlopen'd and fed recorded answers), the CLI's configuration paths and
# `llmux serve` through configuration reloads under valgrind's memcheck:
# any leak or invalid access fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
VG=(valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
    --track-origins=yes)
fail=0
for t in test_base_json_scan test_base_metrics test_config test_config_registry test_route_ratelimit test_route_router \
         test_route_state test_gateway_generation \
         test_net_tls test_plugin_openai test_plugin_anthropic test_plugin_ollama \
         test_plugin_simple test_gateway_inbound_anthropic test_gateway_inbound_responses \
         test_gateway_fanout test_gateway_unsupported; do
  [ -x "$BUILD/tests/$t" ] || continue
  if "${VG[@]}" "$BUILD/tests/$t" >/dev/null 2>"$BUILD/valgrind-$t.log"; then
    echo "valgrind: $t clean"
  else
    echo "valgrind: $t FAILED"; cat "$BUILD/valgrind-$t.log"; fail=1
  fi
done
for args in "check -c config/llmux.ini" "resolve best-large -c config/llmux.ini"; do
  # shellcheck disable=SC2086
  if "${VG[@]}" "$BUILD/llmux" $args >/dev/null 2>"$BUILD/valgrind-cli.log"; then
    echo "valgrind: llmux $args clean"
  else
    echo "valgrind: llmux $args FAILED"; grep -v "warning: provider" "$BUILD/valgrind-cli.log"; fail=1
  fi
done
# `llmux serve` itself, through ten configuration reloads with requests in
# flight, then SIGTERM (tests/e2e/reload_valgrind.test.mjs starts it under
# valgrind with the same flags; about 15 s).
if command -v node >/dev/null && [ -x "$BUILD/tests/mock/mock_upstream" ]; then
  if LLMUX_VALGRIND=1 LLMUX_BUILD_DIR="$(cd "$BUILD" && pwd)" LLMUX_SOURCE_DIR="$PWD" \
     node --test tests/e2e/reload_valgrind.test.mjs >"$BUILD/valgrind-serve.log" 2>&1; then
    echo "valgrind: llmux serve with reloads clean"
  else
    echo "valgrind: llmux serve with reloads FAILED"; cat "$BUILD/valgrind-serve.log"; fail=1
  fi
fi
exit $fail
