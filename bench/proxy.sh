#!/usr/bin/env bash
# Proxy benchmark: a direct connection, HAProxy (TLS in, TLS out) and
# dpgate, side by side in one run, with the same certificates and the
# same sink (dpload sink). Prints dpload's table; figures go into
# docs/BENCHMARKS.md by hand, with this command.
#
#   bash bench/proxy.sh                 # full run, 10s per measurement
#   DURATION=3s IDLE=2000 bash bench/proxy.sh   # quick look
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
IDLE=${IDLE:-5000}
JSON=${JSON:-}

if ! command -v haproxy >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy
fi
. bench/lib.sh # ulimit -n 20000: every piece needs > 2 x IDLE
bench_setup
central_pin=$(site_cert central)
gateway_pin=$(site_cert gateway)

SINK=127.0.0.1:19000 HAPROXY=127.0.0.1:19001 DPGATE=127.0.0.1:19002 ADMIN=127.0.0.1:19003
CLASSIC=127.0.0.1:19004 CLASSIC_ADMIN=127.0.0.1:19005

"$work/dpload" sink --cert "$work/central.pem" --listen "$SINK" > "$work/sink.log" &
pids+=($!)

# HAProxy 2.6, TCP mode, TLS terminated and re-originated like dpgate.
# It cannot pin an SPKI, so it skips verification (less work than a pin).
cat > "$work/haproxy.cfg" <<CFG
global
  maxconn 9000 # 2 x maxconn descriptors must fit the 20,000-file cap
  nbthread 2
defaults
  mode tcp
  timeout connect 10s
  timeout client 10m
  timeout server 10m
frontend agents
  bind $HAPROXY ssl crt $work/gateway.pem
  default_backend central
backend central
  server sink $SINK ssl verify none
CFG
haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 &
pids+=($!)
haproxy_pid=$!

# dpgate with the same gateway certificate, twice: on defaults (offering
# the post-quantum hybrid X25519MLKEM768, which HAProxy's OpenSSL 3.0
# cannot negotiate) and with tls.post_quantum: false, the like-for-like
# comparison with HAProxy. source_rate is off because the benchmark opens
# thousands of connections per second from one address, which the
# default (20/s per source) would rightly refuse.
start_dpgate() { # NAME LISTEN ADMIN POST_QUANTUM
  cat > "$work/$1.yaml" <<CFG
node: {name: $1, data_dir: $work/$1-data}
log: {level: warn}
admin: {listen: "$3"}
tls: {cert: $work/gateway.pem, post_quantum: $4}
push: {listen: "off"}
wake: {listen: "off", shutdown_listen: "off"}
proxy:
  listen: "$2"
  upstreams: [{address: "$SINK", pins: ["$central_pin"]}]
  source_rate: -1
  max_connections: 20000
CFG
  "$work/dpgate" serve -c "$work/$1.yaml" > "$work/$1.log" 2>&1 &
  pids+=($!)
}
start_dpgate dpgate "$DPGATE" "$ADMIN" true
dpgate_pid=$!
start_dpgate dpgate-classic "$CLASSIC" "$CLASSIC_ADMIN" false
classic_pid=$!

for _ in $(seq 100); do
  curl -sf "http://$ADMIN/healthz" >/dev/null && curl -sf "http://$CLASSIC_ADMIN/healthz" >/dev/null &&
    grep -q "sink listening" "$work/sink.log" && break
  sleep 0.1
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(go version | cut -d' ' -f3)"
"$work/dpload" proxy ${JSON:+--json} --duration "$DURATION" --idle-conns "$IDLE" \
  ${SCENARIOS:+--scenarios "$SCENARIOS"} --target "direct,$SINK,$central_pin" \
  --target "haproxy,$HAPROXY,$gateway_pin,$haproxy_pid" \
  --target "dpgate,$DPGATE,$gateway_pin,$dpgate_pid" \
  --target "dpgate-classic,$CLASSIC,$gateway_pin,$classic_pid"
