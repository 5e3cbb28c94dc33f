#!/usr/bin/env bash
# A PowerDNS Authoritative server (Debian's pdns-server, SQLite backend) with its HTTP API, on
# loopback and unprivileged ports, for the tests and the local stack. Its config, database and
# PID file live under PLINTH_PDNS_DIR; it stops only the server whose PID it recorded there.
#
#   scripts/pdns.sh start   start (initialising the directory if needed); prints KEY=value lines
#   scripts/pdns.sh stop    stop the recorded server (SIGTERM, then SIGKILL after 5 s)
#   scripts/pdns.sh status  exit 0 if the recorded server runs
#   scripts/pdns.sh env     the KEY=value lines (PDNS_API_URL, PDNS_API_KEY, PDNS_DNS_PORT)
#
# Settings (environment): PLINTH_PDNS_DIR (default <repo>/.dev/pdns), PLINTH_PDNS_DNS_PORT
# (default 15353), PLINTH_PDNS_API_PORT (default 18081), PLINTH_PDNS_API_KEY (default
# dev-pdns-key). Caches are off, so a query made before a zone exists is not answered from a
# stale REFUSED afterwards.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/dns-server.sh
. "$root/scripts/lib/dns-server.sh"
dir=${PLINTH_PDNS_DIR:-$root/.dev/pdns}
dns_port=${PLINTH_PDNS_DNS_PORT:-15353}
api_port=${PLINTH_PDNS_API_PORT:-18081}
api_key=${PLINTH_PDNS_API_KEY:-dev-pdns-key}
schema=/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql
api_url="http://127.0.0.1:$api_port"
pidfile=$dir/pdns.pid

env_lines() {
  echo "PDNS_API_URL=$api_url"
  echo "PDNS_API_KEY=$api_key"
  echo "PDNS_DNS_PORT=$dns_port"
}

api_answers() {
  curl -fsS -o /dev/null -H "X-API-Key: $api_key" "$api_url/api/v1/servers/localhost" 2>/dev/null
}

case "${1:-}" in
  start)
    command -v pdns_server >/dev/null || { echo "pdns.sh: pdns_server is not installed (scripts/test-deps.sh installs it)" >&2; exit 1; }
    if ! dns_server_running "$pidfile"; then
      mkdir -p "$dir/run"
      [ -f "$dir/pdns.sqlite3" ] || sqlite3 "$dir/pdns.sqlite3" < "$schema"
      cat > "$dir/pdns.conf" <<CONF
launch=gsqlite3
gsqlite3-database=$dir/pdns.sqlite3
local-address=127.0.0.1
local-port=$dns_port
socket-dir=$dir/run
daemon=no
guardian=no
disable-syslog=yes
loglevel=4
security-poll-suffix=
api=yes
api-key=$api_key
webserver=yes
webserver-address=127.0.0.1
webserver-port=$api_port
webserver-allow-from=127.0.0.0/8,::1
default-soa-content=ns1.plinth.test. hostmaster.@ 0 10800 3600 604800 3600
cache-ttl=0
negquery-cache-ttl=0
query-cache-ttl=0
zone-cache-refresh-interval=0
CONF
      pdns_server --config-dir="$dir" >"$dir/pdns.log" 2>&1 &
      echo $! > "$pidfile"
      dns_server_wait "pdns.sh: pdns_server" "$pidfile" "$dir/pdns.log" api_answers
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
