#!/usr/bin/env bash
# Push server benchmark: memory per connection at AGENTS connections (one
# process may hold at most 20,000 open files here, so per-process figures
# are taken at 19,000), side by side with a naive goroutine-per-connection
# crypto/tls server; publish->receive latency at RATE pushes/s to random
# devices; broadcast to all; every agent reconnecting at once. Then the
# memory figure again with the agents on QUIC.
#
#   bash bench/push.sh                       # 19,000 agents, 5,000 pushes/s
#   AGENTS=2000 RATE=1000 bash bench/push.sh # quick look
#   PHASES=quic bash bench/push.sh           # one phase: naive, tls, quic
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-19000}
RATE=${RATE:-5000}
DURATION=${DURATION:-10s}
PHASES=${PHASES:-naive,tls,quic}
has() { [[ ",$PHASES," == *",$1,"* ]]; }
. bench/lib.sh
bench_setup
pin=$(site_cert gateway)
site_token

PUSH=127.0.0.1:19100 ADMIN=127.0.0.1:19101 NAIVE=127.0.0.1:19102

start_dpgate() { # NAME
  cat > "$work/$1.yaml" <<CFG
node: {name: $1, data_dir: $work/$1-data}
log: {level: warn}
admin: {listen: "$ADMIN", token_file: $work/admin.token}
tls: {cert: $work/gateway.pem}
push: {listen: "$PUSH", auth: none, max_connections: 19500}
wake: {listen: "off", shutdown_listen: "off"}
CFG
  "$work/dpgate" serve -c "$work/$1.yaml" > "$work/$1.log" 2>&1 &
  server_pid=$!
  pids+=($server_pid)
  for _ in $(seq 100); do curl -sf "http://$ADMIN/healthz" >/dev/null && return; sleep 0.1; done
  echo "dpgate did not start:"; cat "$work/$1.log"; exit 1
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version | cut -d' ' -f3)"

if has naive; then
echo "== naive goroutine-per-connection crypto/tls server, $AGENTS TLS agents"
"$work/dpload" naive-server --cert "$work/gateway.pem" --listen "$NAIVE" > "$work/naive.out" &
naive_pid=$!
pids+=($naive_pid)
sleep 0.5
"$work/dpload" push --server "$NAIVE" --pin "$pin" --pid "$naive_pid" --agents "$AGENTS" --scenarios memory
kill "$naive_pid"
fi

if has tls; then
echo "== dpgate, $AGENTS TLS agents"
start_dpgate tls
"$work/dpload" push --server "$PUSH" --admin "http://$ADMIN" --pin "$pin" --pid "$server_pid" \
  --agents "$AGENTS" --rate "$RATE" --duration "$DURATION" --scenarios memory,latency,broadcast,storm
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
fi

if has quic; then
echo "== dpgate, $AGENTS QUIC agents"
start_dpgate quic
"$work/dpload" push --quic --server "$PUSH" --admin "http://$ADMIN" --pin "$pin" --pid "$server_pid" \
  --agents "$AGENTS" --rate "$RATE" --duration "$DURATION" --scenarios memory,latency,broadcast
fi
