#!/usr/bin/env bash
# dpload connect beyond one process's open-file cap: AGENTS agents to a
# NODES-node cluster, sharded by --procs auto (at most 18,000 agents per
# worker process), with the gateways' figures read from their admin APIs.
#
#   bash bench/connect.sh                       # 25,000 agents, 2 nodes
#   AGENTS=2000 bash bench/connect.sh           # quick look
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-2}
AGENTS=${AGENTS:-25000}
RAMP=${RAMP:-500}
HOLD=${HOLD:-30s}
. bench/lib.sh
bench_setup
gossip_key
pin=$(site_cert gateway)
site_token

servers=(); admins=()
for i in $(seq 0 $((NODES - 1))); do
  join=""
  [ "$i" -gt 0 ] && join="join: [\"127.0.0.1:19500\"]"
  cat > "$work/node$i.yaml" <<CFG
node: {name: node-$i, data_dir: $work/node$i-data}
log: {level: warn}
admin: {listen: "127.0.0.1:$((19600 + i))", token_file: $work/admin.token}
tls: {cert: $work/gateway.pem}
push: {listen: "127.0.0.1:$((19700 + i))", auth: none, quic: false, max_connections: 19500}
wake: {listen: "off", shutdown_listen: "off"}
cluster: {bind: "127.0.0.1:$((19500 + i))", secret_key_file: $work/gossip.key, $join}
CFG
  "$work/dpgate" serve -c "$work/node$i.yaml" > "$work/node$i.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((19600 + i))/healthz" >/dev/null && break; sleep 0.1; done
  servers+=("127.0.0.1:$((19700 + i))"); admins+=("http://127.0.0.1:$((19600 + i))")
done
echo "machine: $(nproc) cores, $(go version | cut -d' ' -f3); $NODES nodes"
"$work/dpload" connect --server "$(IFS=,; echo "${servers[*]}")" --admin "$(IFS=,; echo "${admins[*]}")" \
  --pin "$pin" --agents "$AGENTS" --procs auto --ramp "$RAMP" --hold "$HOLD" "$@"
