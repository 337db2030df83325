#!/usr/bin/env bash
# The figures in docs/BENCHMARKS.md that Go benchmarks and measuring tests
# make (the load tests have their own scripts: proxy.sh, push.sh,
# cluster.sh, connect.sh). Each step prints its command, then its output.
#
#   bash bench/go.sh                 # every step (about 15 minutes on 2 cores)
#   bash bench/go.sh store reflector # some of them
#   bash bench/go.sh --list          # the steps
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A steps=(
  [tls]="go test ./tlsconf -run XXX -bench . -benchtime 1s -count 8"
  [store]="go test ./internal/store -run XXX -bench Put -benchtime 2s -count 3"
  [enqueue]="go test ./push -run XXX -bench Enqueue -benchtime 2s -count 3"
  [counter]="go test -run ^\$ -bench Counter -cpu 1,2 ./internal/telemetry"
  [crossnode]="go test -run ^\$ -bench PushLatency -benchtime 2000x -count 3 ./internal/gateway"
  [failover]="go test -count=1 -run TestClusterSurvivesKill9 -v ./cmd/dpgate"
  [spread]="go test -count=1 -run TestAgentsSpreadOverNodes -v ./cluster"
  [wake]="go test -count=1 -run TestWakeUpEndToEnd -v ./cmd/dpgate"
  [accuracy]="go test -count=1 -run TestAccuracyThroughEmulator|TestVerdictFollowsTheLink -v ./link"
  [reflector]="go test -run ^\$ -bench Reflector -cpu 1 -benchtime 200000x -count 3 ./link"
)
order=(tls store enqueue counter crossnode failover spread wake accuracy reflector)

if [ "${1:-}" = "--list" ]; then
  for s in "${order[@]}"; do printf "%-10s %s\n" "$s" "${steps[$s]}"; done
  exit 0
fi
want=("$@")
[ "${#want[@]}" -eq 0 ] && want=("${order[@]}")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version | cut -d' ' -f3), $(date -u +%FT%TZ)"
for s in "${want[@]}"; do
  cmd=${steps[$s]:-}
  if [ -z "$cmd" ]; then echo "unknown step $s (bash bench/go.sh --list)" >&2; exit 2; fi
  echo; echo "== $s: $cmd"
  read -ra argv <<<"$cmd"
  # The reflector runs alone on one core when taskset is there (BENCHMARKS
  # also has the two-core variant with dpgate reflect pinned apart).
  if [ "$s" = reflector ] && command -v taskset >/dev/null; then argv=(taskset -c 0 "${argv[@]}"); fi
  "${argv[@]}" 2>&1 | grep -E '^(Benchmark|ok|FAIL|---|\s+\S+_test\.go)' || true
done
