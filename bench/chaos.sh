#!/usr/bin/env bash
# Long fault-injection runs (docs/RELIABILITY.md): 3 real gateway nodes in
# network namespaces, agents and a publisher, every fault once and then
# MIXED of random faults. As root (namespaces, nftables, tmpfs).
#   bash bench/chaos.sh                 # 10 minutes of mixed faults
#   MIXED=30m RATE=50 bash bench/chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MIXED=${MIXED:-10m} NODES=${NODES:-3} AGENTS=${AGENTS:-60} RATE=${RATE:-30} OUT=${OUT:-/tmp/chaos-$(date +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"
go build -o "$OUT/dpgate" ./cmd/dpgate
go build -o "$OUT/dpload" ./cmd/dpload
echo "machine: $(nproc) cores, $(go version | cut -d' ' -f3); $NODES nodes, $AGENTS agents, $RATE pushes/s, every fault once then $MIXED mixed; logs in $OUT"
"$OUT/dpload" chaos --dpgate "$OUT/dpgate" --nodes "$NODES" --agents "$AGENTS" --rate "$RATE" --mixed "$MIXED" \
  --dir "$OUT/run" --history "$OUT/history.json" | tee "$OUT/report.txt"
