#!/usr/bin/env bash
# What a dpgate command costs to start: runs "BIN --help" N times (200)
# for each binary given, alternating, three rounds, and prints the wall
# and CPU time per start and the time its package inits took
# (GODEBUG=inittrace=1). With no binary, builds this checkout's.
#
#   bash bench/startup.sh [BIN...]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200}
if [ "$#" -eq 0 ]; then
  go build -o /tmp/dpgate-startup ./cmd/dpgate
  set -- /tmp/dpgate-startup
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for b in "$@"; do
  init=$(GODEBUG=inittrace=1 "$b" --help 2>&1 >/dev/null | awk '/^init /{s+=$5} END {printf "%.1f", s}')
  echo "$b: package inits $init ms"
done
for round in 1 2 3; do
  for b in "$@"; do
    /usr/bin/time -o "$out" -f "%e %U %S" bash -c "for i in \$(seq $N); do '$b' --help >/dev/null; done"
    read -r e u s < "$out"
    awk -v b="$b" -v r="$round" -v n="$N" -v e="$e" -v u="$u" -v s="$s" \
      'BEGIN {printf "%s round %d: %.1f ms wall, %.1f ms CPU per start\n", b, r, e*1000/n, (u+s)*1000/n}'
  done
done
