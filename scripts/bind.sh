#!/usr/bin/env bash
# A BIND9 authoritative server (Debian's bind9 package, `named`) for one zone that accepts RFC 2136
# dynamic updates signed with a TSIG key (hmac-sha256), on loopback and an unprivileged port, for
# the tests and the local stack. Its config, zone, key and PID file live under PLINTH_BIND_DIR; it
# stops only the server whose PID it recorded there.
#
#   scripts/bind.sh start   start (making the key and zone if needed); prints KEY=value lines
#   scripts/bind.sh stop    stop the recorded server (SIGTERM, then SIGKILL after 5 s)
#   scripts/bind.sh status  exit 0 if the recorded server runs
#   scripts/bind.sh env     the KEY=value lines (BIND_DNS_PORT, BIND_ZONE, BIND_KEY_NAME,
#                           BIND_KEY_FILE: the file holding the key's base64 secret)
#
# Settings (environment): PLINTH_BIND_DIR (default <repo>/.dev/bind), PLINTH_BIND_PORT (default
# 15355), PLINTH_BIND_ZONE (default k8s.plinth.test), PLINTH_BIND_KEY_NAME (default plinth-key).
# The key may change only A and AAAA records inside the zone (update-policy zonesub), which is
# all plinth needs. rndc is off (`controls { };`), so servers of parallel tests do not compete
# for its port.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/dns-server.sh
. "$root/scripts/lib/dns-server.sh"
dir=${PLINTH_BIND_DIR:-$root/.dev/bind}
port=${PLINTH_BIND_PORT:-15355}
zone=${PLINTH_BIND_ZONE:-k8s.plinth.test}
key_name=${PLINTH_BIND_KEY_NAME:-plinth-key}
key_file=$dir/tsig.secret
pidfile=$dir/named.pid.recorded

env_lines() {
  echo "BIND_DNS_PORT=$port"
  echo "BIND_ZONE=$zone"
  echo "BIND_KEY_NAME=$key_name"
  echo "BIND_KEY_FILE=$key_file"
}

case "${1:-}" in
  start)
    command -v named >/dev/null || { echo "bind.sh: named is not installed (scripts/test-deps.sh installs bind9)" >&2; exit 1; }
    if ! dns_server_running "$pidfile"; then
      dns_primary_files "$dir"
      (umask 077 && cat > "$dir/named.conf" <<CONF
options {
  directory "$dir";
  pid-file "$dir/named.pid";
  session-keyfile "$dir/session.key";
  managed-keys-directory "$dir";
  listen-on port $port { 127.0.0.1; };
  listen-on-v6 { none; };
  recursion no;
  dnssec-validation no;
  notify no;
};
controls { };
key "$key_name" {
  algorithm hmac-sha256;
  secret "$(cat "$key_file")";
};
zone "$zone" {
  type primary;
  file "$dir/zone.db";
  update-policy { grant $key_name zonesub A AAAA; };
};
CONF
      )
      # -g: foreground, logging to stderr; -n 1: one worker thread is plenty on loopback.
      named -g -n 1 -4 -c "$dir/named.conf" >"$dir/named.log" 2>&1 &
      echo $! > "$pidfile"
      dns_server_wait "bind.sh: named" "$pidfile" "$dir/named.log" dns_zone_answers "$port" "$zone"
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
