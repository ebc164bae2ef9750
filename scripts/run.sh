#!/usr/bin/env bash
# Installs what is missing, builds, and starts the gateway with
# config/llmux.ini (arguments are passed on to `llmux serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLLMUX_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)"
exec ./build/llmux serve -c config/llmux.ini "$@"
