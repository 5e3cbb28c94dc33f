#!/usr/bin/env bash
# `make run`: the whole local stack, from a fresh clone, in one command — a throwaway
# PostgreSQL, the compute service, a DNS server with the dev zone, and plinth — all on loopback.
# The DNS server is PowerDNS behind its HTTP API (when pdns_server is installed; DNS is reported
# as not configured otherwise), or with PLINTH_DNS=bind BIND9's named taking RFC 2136 updates
# signed with a TSIG key made under $PLINTH_DEV_DIR/bind (scripts/test-deps.sh installs it). It
# writes a dev
# token to $PLINTH_DEV_DIR/token and the stack's addresses to $PLINTH_DEV_DIR/stack.env, prints a
# curl that founds a cluster, and stops everything it started on Ctrl-C or SIGTERM.
#
# The API listens on plain HTTP (loopback, for the printed curl); the VMs fetch their bundles
# over HTTPS from a bootstrap listener of its own, whose certificate a CA made under
# $PLINTH_DEV_DIR signs, and every shim pins that CA. Token keys are served as a JWKS file.
#
# Ports and places (environment): PLINTH_PORT (8080), PLINTH_BOOTSTRAP_PORT (8443),
# COMPUTE_PORT (8081), PLINTH_PG_PORT (55432),
# PLINTH_PDNS_DNS_PORT (15353), PLINTH_PDNS_API_PORT (18081), PLINTH_BIND_PORT (15355),
# DNS_ZONE (k8s.plinth.test), PLINTH_DEV_DIR (.dev), PLINTH_DEV_ORG (dev-org), PLINTH_DNS
# (powerdns or bind). $PLINTH_DEV_DIR/stack.env has DNS_PORT and DNS_ZONE in both modes.
#
# PLINTH_PROFILE: `debug` (the default) or `release` (`cargo build --release`, and the binaries
# under target/release; scripts/bench-load.sh uses it). Any other PLINTH__<SECTION>__<KEY> (e.g.
# PLINTH__LIMITS__MAX_CLUSTERS_PER_ORG) and COMPUTE_SIM__<KEY> (e.g.
# COMPUTE_SIM__FAULTS__CREATE_VM__LATENCY_MS) in the caller's environment reach plinth and the
# compute service as they are; the ones this script sets below take precedence.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dev=${PLINTH_DEV_DIR:-$root/.dev}
mkdir -p "$dev"
dev=$(cd "$dev" && pwd)
plinth_port=${PLINTH_PORT:-8080}
bootstrap_port=${PLINTH_BOOTSTRAP_PORT:-8443}
compute_port=${COMPUTE_PORT:-8081}
zone=${DNS_ZONE:-k8s.plinth.test}
org=${PLINTH_DEV_ORG:-dev-org}
compute_token=dev-compute-token
profile=${PLINTH_PROFILE:-debug}
dns_server=${PLINTH_DNS:-powerdns}
case "$dns_server" in
  powerdns) ;;
  bind) command -v named >/dev/null 2>&1 || { echo "run: PLINTH_DNS=bind needs named (BIND9): scripts/test-deps.sh installs it" >&2; exit 1; } ;;
  *) echo "run: PLINTH_DNS must be powerdns or bind, not '$dns_server'" >&2; exit 2 ;;
esac
case "$profile" in
  debug) build_flags=() ;;
  release) build_flags=(--release) ;;
  *) echo "run: PLINTH_PROFILE must be debug or release, not '$profile'" >&2; exit 2 ;;
esac
bin=target/$profile
export PLINTH_PG_DIR=$dev/pg PLINTH_PG_PORT=${PLINTH_PG_PORT:-55432}
export PLINTH_PDNS_DIR=$dev/pdns PLINTH_PDNS_DNS_PORT=${PLINTH_PDNS_DNS_PORT:-15353}
export PLINTH_PDNS_API_PORT=${PLINTH_PDNS_API_PORT:-18081} PLINTH_PDNS_API_KEY=dev-pdns-key
export PLINTH_BIND_DIR=$dev/bind PLINTH_BIND_PORT=${PLINTH_BIND_PORT:-15355}
export PLINTH_BIND_ZONE=$zone PLINTH_BIND_KEY_NAME=plinth-key

say() { printf 'run: %s\n' "$*"; }

pids=()
started_pg=0
started_pdns=0
started_bind=0
cleanup() {
  trap - EXIT INT TERM
  say "stopping the stack"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ "$started_pdns" = 1 ] && scripts/pdns.sh stop || true
  [ "$started_bind" = 1 ] && scripts/bind.sh stop || true
  [ "$started_pg" = 1 ] && scripts/pg.sh stop || true
  say "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() { # wait_for URL PID LOG SECONDS
  local url=$1 pid=$2 log=$3 limit=$4
  for _ in $(seq 1 $((limit * 10))); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run: the process behind $url exited; its log:" >&2
      tail -n 30 "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "run: $url did not answer within ${limit}s; log: $log" >&2
  return 1
}

say "building plinth and the compute service"
cargo build --quiet "${build_flags[@]}" --bins -p plinth-api -p plinth-compute-sim

# PostgreSQL (the platform database: plinth's tables and the compute service's).
scripts/pg.sh status || started_pg=1
scripts/pg.sh start >/dev/null
scripts/pg.sh createdb plinth
database_url="postgres://plinth:plinth@127.0.0.1:$PLINTH_PG_PORT/plinth"

# Local secrets, made once: the dev token signing key pair and the master key.
(
  umask 077
  if [ ! -f "$dev/jwt-signing.pem" ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dev/jwt-signing.pem" 2>/dev/null
    openssl pkey -in "$dev/jwt-signing.pem" -pubout -out "$dev/jwt-public.pem"
  fi
  [ -f "$dev/master-keys" ] || echo "dev1:$(openssl rand -base64 32)" > "$dev/master-keys"
  # The bootstrap listener's CA and its certificate for 127.0.0.1 (P-256, ten years: a local
  # stack's). The CA's key signs nothing else.
  if [ ! -f "$dev/bootstrap.crt" ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=plinth dev bootstrap CA" -keyout "$dev/bootstrap-ca.key" \
      -out "$dev/bootstrap-ca.crt" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=plinth dev bootstrap" -keyout "$dev/bootstrap.key" \
      -out "$dev/bootstrap.csr" 2>/dev/null
    printf '%s\n' 'subjectAltName=IP:127.0.0.1' 'extendedKeyUsage=serverAuth' \
      'keyUsage=critical,digitalSignature' 'basicConstraints=critical,CA:FALSE' \
      > "$dev/bootstrap.ext"
    openssl x509 -req -in "$dev/bootstrap.csr" -CA "$dev/bootstrap-ca.crt" \
      -CAkey "$dev/bootstrap-ca.key" -CAcreateserial -days 3650 \
      -extfile "$dev/bootstrap.ext" -out "$dev/bootstrap.crt" 2>/dev/null
    rm -f "$dev/bootstrap.csr" "$dev/bootstrap.ext" "$dev/bootstrap-ca.srl"
  fi
)

# The compute service.
COMPUTE_SIM__LISTEN="127.0.0.1:$compute_port" COMPUTE_SIM__DATABASE_URL="$database_url" \
COMPUTE_SIM__TOKEN="$compute_token" \
  "$bin"/plinth-compute-sim --config config/compute-sim.toml >"$dev/compute-sim.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$compute_port/healthz" "${pids[-1]}" "$dev/compute-sim.log" 60

# The DNS server: BIND9 when asked for, otherwise PowerDNS when installed.
dns_mode=disabled
dns_port=
if [ "$dns_server" = bind ]; then
  scripts/bind.sh status || started_bind=1
  scripts/bind.sh start >/dev/null
  dns_mode=rfc2136
  dns_port=$PLINTH_BIND_PORT
elif command -v pdns_server >/dev/null 2>&1; then
  scripts/pdns.sh status || started_pdns=1
  scripts/pdns.sh start >/dev/null
  dns_mode=powerdns
  dns_port=$PLINTH_PDNS_DNS_PORT
else
  say "pdns_server is not installed: DNS is disabled (foundings report dns_configured=false)"
fi

# plinth.
export PLINTH_ENV=dev
export PLINTH__SERVER__LISTEN="127.0.0.1:$plinth_port"
export PLINTH__DATABASE__URL="$database_url"
export PLINTH__DATABASE__MIGRATE_ON_START=true
export PLINTH__MASTER_KEYS__FILE="$dev/master-keys"
export PLINTH__AUTH__JWKS_FILE="$dev/jwks.json"
export PLINTH__AUTH__DEV_SIGNING_KEY_FILE="$dev/jwt-signing.pem"
export PLINTH__COMPUTE__BASE_URL="http://127.0.0.1:$compute_port"
export PLINTH__COMPUTE__TOKEN="$compute_token"
export PLINTH__DNS__MODE="$dns_mode"
export PLINTH__DNS__POWERDNS__API_URL="http://127.0.0.1:$PLINTH_PDNS_API_PORT"
export PLINTH__DNS__POWERDNS__API_KEY="$PLINTH_PDNS_API_KEY"
export PLINTH__DNS__POWERDNS__ENSURE_ZONE=true
export PLINTH__DNS__POWERDNS__NAMESERVERS="ns1.$zone"
export PLINTH__DNS__RFC2136__SERVER="127.0.0.1:$PLINTH_BIND_PORT"
export PLINTH__DNS__RFC2136__KEY_NAME="$PLINTH_BIND_KEY_NAME"
export PLINTH__DNS__RFC2136__KEY_SECRET_FILE="$PLINTH_BIND_DIR/tsig.secret"
export PLINTH__FOUNDING__DNS_ZONE="$zone"
export PLINTH__SERVER__BOOTSTRAP_LISTEN="127.0.0.1:$bootstrap_port"
export PLINTH__SERVER__BOOTSTRAP_TLS_CERT_FILE="$dev/bootstrap.crt"
export PLINTH__SERVER__BOOTSTRAP_TLS_KEY_FILE="$dev/bootstrap.key"
export PLINTH__FOUNDING__BOOTSTRAP_BASE_URL="https://127.0.0.1:$bootstrap_port"
export PLINTH__FOUNDING__BOOTSTRAP_CA_FILE="$dev/bootstrap-ca.crt"
# The dev key's public half as an identity provider publishes it.
"$bin"/plinth dev-jwks > "$dev/jwks.json.next"
mv "$dev/jwks.json.next" "$dev/jwks.json"
"$bin"/plinth serve >"$dev/plinth.log" 2>&1 &
pids+=($!)
plinth_pid=${pids[-1]}
wait_for "http://127.0.0.1:$plinth_port/readyz" "$plinth_pid" "$dev/plinth.log" 120

"$bin"/plinth dev-token --org "$org" > "$dev/token"
{
  echo "PLINTH_URL=http://127.0.0.1:$plinth_port"
  echo "BOOTSTRAP_URL=https://127.0.0.1:$bootstrap_port"
  echo "BOOTSTRAP_CA=$dev/bootstrap-ca.crt"
  echo "COMPUTE_URL=http://127.0.0.1:$compute_port"
  echo "COMPUTE_TOKEN=$compute_token"
  echo "DATABASE_URL=$database_url"
  echo "DNS_ZONE=$zone"
  echo "DNS_MODE=$dns_mode"
  [ -n "$dns_port" ] && echo "DNS_PORT=$dns_port"
  if [ "$dns_mode" = powerdns ]; then
    echo "PDNS_API_URL=http://127.0.0.1:$PLINTH_PDNS_API_PORT"
    echo "PDNS_API_KEY=$PLINTH_PDNS_API_KEY"
    echo "PDNS_DNS_PORT=$PLINTH_PDNS_DNS_PORT"
  fi
  if [ "$dns_mode" = rfc2136 ]; then
    echo "TSIG_KEY_NAME=$PLINTH_BIND_KEY_NAME"
    echo "TSIG_KEY_FILE=$PLINTH_BIND_DIR/tsig.secret"
  fi
} > "$dev/stack.env"

dig_hint=
if [ -n "$dns_port" ]; then
  dig_hint=$(printf '\n%s\n\n%s\n' \
    "Then ask the DNS server ($dns_server) for the control_plane_dns_name of the answer:" \
    "dig @127.0.0.1 -p $dns_port api.cluster-<id>.$zone A +short")$'\n'
fi
cat <<TXT

plinth is up on http://127.0.0.1:$plinth_port, VMs fetch bundles from https://127.0.0.1:$bootstrap_port
(logs in $dev/*.log; addresses in $dev/stack.env).
Found a 3-node cluster for organization $org:

curl -sS -X POST http://127.0.0.1:$plinth_port/clusters -H "Authorization: Bearer \$(cat $dev/token)" -H 'Content-Type: application/json' -d '{"name":"demo","control_plane_count":3}'
$dig_hint
A token for another organization: make token ORG=org-b
A second replica on the same database: scripts/run-replica.sh 8090
Ctrl-C stops the stack.
TXT

wait "$plinth_pid"
