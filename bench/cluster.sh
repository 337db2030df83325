#!/usr/bin/env bash
# Cluster connection benchmark: NODES dpgate processes form one cluster on
# this machine, and one "dpload agents" process per node connects
# PER_NODE agents to it (a process may hold at most 20,000 open files
# here, so no process holds more than ~19,500). Agents are spread over
# 16 loopback source addresses. Prints progress every 5 s, then per node:
# sessions, RSS, RSS per session, open files; and the cluster total.
#
#   bash bench/cluster.sh                     # 8 x 19,000 = 152,000 agents
#   NODES=3 PER_NODE=2000 bash bench/cluster.sh   # quick look
#   PROBE=500ms bash bench/cluster.sh            # another cluster.probe_interval
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-8}
PER_NODE=${PER_NODE:-19000}
RAMP=${RAMP:-75}          # new connections per second per agent process (2 cores: ~600/s in all)
TIMEOUT=${TIMEOUT:-900}   # seconds to wait for every agent
# Balancing as the gateway's defaults (MARGIN=100% REBALANCE=-1 turn it
# off; each agent process targets its own node anyway).
MARGIN=${MARGIN:-5%}
REBALANCE=${REBALANCE:-50}
PROBE=${PROBE:-400ms}     # cluster.probe_interval
. bench/lib.sh
bench_setup
gossip_key
# One certificate for the site, so an agent moved to another node by a
# REDIRECT finds the pin it knows.
pin=$(site_cert gateway)
site_token # dpload reads DPGATE_TOKEN, curl the header
auth="Authorization: Bearer $DPGATE_TOKEN"

push_addr() { echo "127.0.0.1:$((19200 + $1))"; }
admin_addr() { echo "127.0.0.1:$((19300 + $1))"; }
gossip_addr() { echo "127.0.0.1:$((19400 + $1))"; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(go version | cut -d' ' -f3)"
echo "== $NODES dpgate nodes, $PER_NODE agents each ($((NODES * PER_NODE)) in all), ramp $RAMP/s per agent process, margin $MARGIN, rebalance_rate $REBALANCE, probe_interval $PROBE"
node_pids=()
for i in $(seq 0 $((NODES - 1))); do
  join=""
  [ "$i" -gt 0 ] && join="join: [\"$(gossip_addr 0)\"]"
  cat > "$work/node$i.yaml" <<CFG
node: {name: node-$i, data_dir: $work/node$i-data}
log: {level: warn}
admin: {listen: "$(admin_addr "$i")", token_file: $work/admin.token}
tls: {cert: $work/gateway.pem}
push: {listen: "$(push_addr "$i")", auth: none, quic: false, max_connections: 19500}
wake: {listen: "off", shutdown_listen: "off"}
cluster: {bind: "$(gossip_addr "$i")", secret_key_file: $work/gossip.key, margin: "$MARGIN", rebalance_rate: $REBALANCE, probe_interval: $PROBE, $join}
CFG
  "$work/dpgate" serve -c "$work/node$i.yaml" > "$work/node$i.log" 2>&1 &
  node_pids+=($!)
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://$(admin_addr "$i")/healthz" >/dev/null && break; sleep 0.1; done
done

members() { curl -sf -H "$auth" "http://$(admin_addr 0)/v1/status" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["cluster"] or []))'; }
for _ in $(seq 100); do [ "$(members)" = "$NODES" ] && break; sleep 0.2; done
echo "cluster formed: $(members) members"

agent_pids=()
for i in $(seq 0 $((NODES - 1))); do
  # stdin held open by sleep: the fleet runs until killed.
  sleep infinity | "$work/dpload" agents --server "$(push_addr "$i")" --pin "$pin" \
    --first $((i * PER_NODE)) --count "$PER_NODE" --source-ips 16 --ramp "$RAMP" > "$work/agents$i.out" 2>&1 &
  agent_pids+=($!)
  pids+=($!)
done

sessions() { # NODE
  curl -sf --max-time 5 -H "$auth" "http://$(admin_addr "$1")/v1/status" | python3 -c 'import json,sys; print((json.load(sys.stdin).get("push") or {}).get("sessions", 0))' 2>/dev/null || echo 0
}
want=$((NODES * PER_NODE))
start=$(date +%s)
best=0; best_at=$start
while :; do
  sleep 5
  total=0; line=""
  for i in $(seq 0 $((NODES - 1))); do s=$(sessions "$i"); total=$((total + s)); line="$line $s"; done
  now=$(date +%s)
  echo "t=$((now - start))s connected $total / $want  per node:$line"
  [ "$total" -ge "$want" ] && break
  if [ "$total" -gt "$best" ]; then best=$total; best_at=$now; fi
  if [ $((now - best_at)) -ge 60 ] || [ $((now - start)) -ge "$TIMEOUT" ]; then
    echo "no progress for 60 s (or past ${TIMEOUT}s): stopping at $total"
    break
  fi
done
sleep 5 # let the counts settle
echo
printf "%-8s %9s %10s %12s %10s\n" node sessions "RSS MiB" "KiB/session" "open files"
total=0; rss_total=0
for i in $(seq 0 $((NODES - 1))); do
  p=${node_pids[$i]}
  s=$(sessions "$i")
  rss=$(awk '/VmRSS/{print $2}' "/proc/$p/status")
  fds=$(ls "/proc/$p/fd" | wc -l)
  total=$((total + s)); rss_total=$((rss_total + rss))
  printf "%-8s %9d %10.1f %12.1f %10d\n" "node-$i" "$s" "$(echo "$rss/1024" | bc -l)" "$(echo "$rss/($s+0.0001)" | bc -l)" "$fds"
done
echo "cluster: $total sessions held by $NODES processes, $((rss_total / 1024)) MiB RSS in all"
# Failure detector under this load: how often each node declared another
# dead (none of them died; any count is a false positive of starvation).
failed=""
for i in $(seq 0 $((NODES - 1))); do
  n=$(curl -sf --max-time 5 -H "$auth" "http://$(admin_addr "$i")/metrics" | awk '/^dpgate_cluster_nodes_failed_total /{print $2}')
  failed="$failed ${n:-0}"
done
echo "nodes declared failed (false positives), per node:$failed"
for i in $(seq 0 $((NODES - 1))); do
  p=$(pgrep -P "$$" -f "dpload agents --server $(push_addr "$i")" | head -1 || true)
  [ -n "$p" ] && echo "agent process $i: $(ls "/proc/$p/fd" | wc -l) open files, $(( $(awk '/VmRSS/{print $2}' "/proc/$p/status") / 1024 )) MiB RSS"
done
