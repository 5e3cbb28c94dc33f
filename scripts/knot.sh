#!/usr/bin/env bash
# A Knot DNS authoritative server (Debian's knot package, `knotd`) for one zone that accepts
# RFC 2136 dynamic updates signed with a TSIG key (hmac-sha256), on loopback and an unprivileged
# port: a second RFC 2136 server for the Dns contract suite. Its config, zone, key, databases and
# PID file live under PLINTH_KNOT_DIR; it stops only the server whose PID it recorded there.
#
#   scripts/knot.sh start   start (making the key and zone if needed); prints KEY=value lines
#   scripts/knot.sh stop    stop the recorded server (SIGTERM, then SIGKILL after 5 s)
#   scripts/knot.sh status  exit 0 if the recorded server runs
#   scripts/knot.sh env     the KEY=value lines (KNOT_DNS_PORT, KNOT_ZONE, KNOT_KEY_NAME,
#                           KNOT_KEY_FILE: the file holding the key's base64 secret)
#
# Settings (environment): PLINTH_KNOT_DIR (default <repo>/.dev/knot), PLINTH_KNOT_PORT (default
# 15357), PLINTH_KNOT_ZONE (default k8s.plinth.test), PLINTH_KNOT_KEY_NAME (default plinth-key).
# The key may change only A and AAAA records (acl update-type), which is all plinth needs.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/dns-server.sh
. "$root/scripts/lib/dns-server.sh"
dir=${PLINTH_KNOT_DIR:-$root/.dev/knot}
port=${PLINTH_KNOT_PORT:-15357}
zone=${PLINTH_KNOT_ZONE:-k8s.plinth.test}
key_name=${PLINTH_KNOT_KEY_NAME:-plinth-key}
key_file=$dir/tsig.secret
pidfile=$dir/knotd.pid.recorded

env_lines() {
  echo "KNOT_DNS_PORT=$port"
  echo "KNOT_ZONE=$zone"
  echo "KNOT_KEY_NAME=$key_name"
  echo "KNOT_KEY_FILE=$key_file"
}

case "${1:-}" in
  start)
    command -v knotd >/dev/null || { echo "knot.sh: knotd is not installed (scripts/test-deps.sh installs knot)" >&2; exit 1; }
    if ! dns_server_running "$pidfile"; then
      dns_primary_files "$dir"
      mkdir -p "$dir/run" "$dir/db"
      (umask 077 && cat > "$dir/knot.conf" <<CONF
server:
    rundir: "$dir/run"
    listen: 127.0.0.1@$port
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

log:
  - target: stderr
    any: info

database:
    storage: "$dir/db"

key:
  - id: $key_name
    algorithm: hmac-sha256
    secret: $(cat "$key_file")

acl:
  - id: plinth-update
    key: $key_name
    action: update
    update-type: [A, AAAA]

zone:
  - domain: $zone
    storage: "$dir"
    file: "zone.db"
    zonefile-sync: -1
    acl: plinth-update
CONF
      )
      knotd -c "$dir/knot.conf" >"$dir/knotd.log" 2>&1 &
      echo $! > "$pidfile"
      dns_server_wait "knot.sh: knotd" "$pidfile" "$dir/knotd.log" dns_zone_answers "$port" "$zone"
    fi
    env_lines
    ;;
  stop)
    dns_server_stop "$pidfile"
    ;;
  status)
    dns_server_running "$pidfile"
    ;;
  env)
    env_lines
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
