# Shared set-up of the bench scripts (sourced, not run): a work directory
# removed at exit, the processes started (pids) killed at exit, dpgate and
# dpload built from this checkout, and helpers for the site's certificate
# and admin token.
#
#   . bench/lib.sh
#   bench_setup          # $work, pids=(), the exit trap, $work/dpgate, $work/dpload
#   site_cert gateway    # $work/gateway.pem; prints its pin
#   site_token           # $work/admin.token, exported as DPGATE_TOKEN
#   gossip_key           # $work/gossip.key, the key of a bench cluster

ulimit -n 20000 # the most a process may hold here

bench_setup() {
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  go build -o "$work/dpgate" ./cmd/dpgate
  go build -o "$work/dpload" ./cmd/dpload
}

# bench_cleanup ends what the script started ($extra_pids too, for
# processes it tracks outside pids) and removes the work directory.
bench_cleanup() {
  for p in "${pids[@]}" ${extra_pids:-}; do kill -9 "$p" 2>/dev/null || true; done
  pkill -P $$ sleep 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}

# site_cert NAME makes $work/NAME.pem (certificate and key, CN NAME) and
# prints its SPKI pin.
site_cert() {
  "$work/dpgate" cert gen --cn "$1" --out "$work/$1.pem" >/dev/null 2>&1
  "$work/dpgate" cert pin "$work/$1.pem"
}

# site_token writes one admin token for every node ($work/admin.token, for
# admin.token_file: the API wants it on every route but /healthz) and
# exports it as DPGATE_TOKEN, which dpload and the CLI read.
# gossip_key writes $work/gossip.key, the cluster key every node of a
# bench cluster shares (cluster.secret_key_file).
gossip_key() {
  head -c 32 /dev/urandom | base64 > "$work/gossip.key"
  chmod 600 "$work/gossip.key"
}

site_token() {
  head -c 32 /dev/urandom | base64 | tr -d '/+=' > "$work/admin.token"
  chmod 600 "$work/admin.token"
  export DPGATE_TOKEN=$(cat "$work/admin.token")
}
