#!/bin/sh
# Fails when a file under core/ includes a header of a folder above its own.
# The order is the one the top CMakeLists.txt draws; folders on one line are
# siblings and may include each other only where listed in SIBLING.
set -eu
CORE=${1:?usage: check_includes.sh CORE_DIR}
rank() {
  case $1 in
    llmux) echo -1 ;; base) echo 0 ;; config) echo 1 ;;
    net|http|route|plugin) echo 2 ;;
    tenant|shared) echo 3 ;; gateway) echo 4 ;; cli) echo 5 ;;
    *) echo 99 ;;
  esac
}
# Sibling edges allowed at rank 2 (from:to): plugin instances take TLS
# contexts from net and their header dialect from route.
SIBLING="plugin:net plugin:route"
bad=0 checked=0
for f in "$CORE"/*/*.[ch]; do
  from=$(basename "$(dirname "$f")")
  rf=$(rank "$from")
  for inc in $(sed -n 's/^#include "\([a-z]*\)\/[a-z_]*\.h".*/\1/p' "$f"); do
    checked=$((checked + 1))
    [ "$inc" = "$from" ] && continue
    ri=$(rank "$inc")
    if [ "$ri" -lt "$rf" ]; then continue; fi
    if [ "$ri" -eq "$rf" ] && [ "$rf" -eq 2 ]; then
      case " $SIBLING " in *" $from:$inc "*) continue ;; esac
    fi
    echo "layering: ${f#"$CORE"/} includes $inc/, which is not below $from/" >&2
    bad=1
  done
done
[ "$checked" -gt 0 ] || { echo "layering: no include read under $CORE" >&2; exit 1; }
echo "layering: $checked includes checked"
exit $bad
