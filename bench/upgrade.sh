#!/usr/bin/env bash
# An upgrade under load (docs/BENCHMARKS.md, "Upgrading under load"): one
# gateway holding AGENTS push agents (dpload connect), upgraded to a new
# build with "dpgate upgrade" while a prober opens admin connections
# every 10 ms. Reports the handover (from the gateway's log), how long the
# agents took to be all back, dpload's failed attempts and the prober's.
#
#   bash bench/upgrade.sh                 # 10,000 agents
#   AGENTS=2000 bash bench/upgrade.sh
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-10000}
. bench/lib.sh
bench_setup
go build -o "$work/dpgate-new" -ldflags "-X github.com/dpgate/dpgate/internal/gateway.version=upgraded" ./cmd/dpgate
pin=$(site_cert gateway)
site_token
cat > "$work/dpgate.yaml" <<CFG
node: {name: upgrade-bench, data_dir: $work/data}
log: {level: info}
admin: {listen: "127.0.0.1:19690", token_file: $work/admin.token}
tls: {cert: $work/gateway.pem}
push: {listen: "127.0.0.1:19790", auth: none, quic: false, max_connections: 19500}
wake: {listen: "off", shutdown_listen: "off"}
CFG
"$work/dpgate" serve -c "$work/dpgate.yaml" > "$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:19690/healthz >/dev/null && break; sleep 0.1; done

sessions() { curl -sf -H "Authorization: Bearer $DPGATE_TOKEN" http://127.0.0.1:19690/v1/status | sed -n 's/.*"sessions": *\([0-9]*\).*/\1/p'; }
"$work/dpload" connect --server 127.0.0.1:19790 --pin "$pin" --agents "$AGENTS" --ramp 1000 --hold 60s > "$work/dpload.txt" 2>&1 &
pids+=($!)
for _ in $(seq 600); do [ "$(sessions)" = "$AGENTS" ] && break; sleep 0.2; done
echo "machine: $(nproc) cores, $(go version | cut -d' ' -f3); $AGENTS agents held: $(sessions) sessions"

# The prober: a new admin connection every 10 ms, counting failures.
( ok=0; fail=0; end=$((SECONDS + 20))
  while [ $SECONDS -lt $end ]; do
    if curl -sf -m 10 http://127.0.0.1:19690/healthz >/dev/null; then ok=$((ok + 1)); else fail=$((fail + 1)); fi
    sleep 0.01
  done; echo "prober: $ok admin connections answered, $fail failed" > "$work/prober.txt" ) &
sleep 1
mv "$work/dpgate-new" "$work/dpgate"
start=$(date +%s.%N)
"$work/dpgate" upgrade -c "$work/dpgate.yaml"
done_at=$(date +%s.%N)
newpid=$(curl -sf -H "Authorization: Bearer $DPGATE_TOKEN" http://127.0.0.1:19690/v1/status | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
extra_pids=$newpid # the new process is ours to end too
for _ in $(seq 1200); do [ "$(sessions)" = "$AGENTS" ] && break; sleep 0.1; done
back=$(date +%s.%N)
echo "dpgate upgrade returned after $(echo "$done_at - $start" | bc) s; all $AGENTS agents back on pid $newpid after $(echo "$back - $start" | bc) s"
grep -E 'handing over|handed over|the new process serves' "$work/serve.log" | sed 's/^time=//' | cut -c1-200
wait "${pids[1]}" || true
grep -iE 'connected|failed|attempts' "$work/dpload.txt" | head -12
wait
cat "$work/prober.txt"
