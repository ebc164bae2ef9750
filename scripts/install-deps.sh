#!/usr/bin/env bash
# Installs what llmux needs to build and test, from Debian's packages only.
# Idempotent: packages already present are not fetched again, and
# `apt-get update` runs at most once, and only when something is missing.
set -euo pipefail

PKGS=(cmake gcc make pkg-config
      libuv1-dev libmbedtls-dev libinih-dev libjansson-dev libcmocka-dev node-llhttp
      libsqlite3-dev libhiredis-dev)
if [ "${1:-}" = "--test" ]; then
  # Tests also need openssl (throwaway CA), and node/npm for the openai client.
  # clang and its compiler-rt (libFuzzer, ASan, UBSan) build tests/fuzz.
  # prometheus: promtool checks /metrics, and a real server scrapes it.
  # redis-server: the shared-state tests start their own, on a free port.
  PKGS+=(openssl ca-certificates valgrind nginx wrk gnuplot-nox clang libclang-rt-14-dev
         prometheus redis-server)
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
