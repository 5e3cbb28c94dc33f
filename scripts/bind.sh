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
dir=${PLINTH_BIND_DIR:-$root/.dev/bind}
port=${PLINTH_BIND_PORT:-15355}
zone=${PLINTH_BIND_ZONE:-k8s.plinth.test}
key_name=${PLINTH_BIND_KEY_NAME:-plinth-key}
key_file=$dir/tsig.secret

env_lines() {
  echo "BIND_DNS_PORT=$port"
  echo "BIND_ZONE=$zone"
  echo "BIND_KEY_NAME=$key_name"
  echo "BIND_KEY_FILE=$key_file"
}

running() {
  [ -f "$dir/named.pid.recorded" ] && kill -0 "$(cat "$dir/named.pid.recorded")" 2>/dev/null
}

answers() {
  dig @127.0.0.1 -p "$port" +tries=1 +time=1 +short "$zone" SOA 2>/dev/null | grep -q .
}

case "${1:-}" in
  start)
    command -v named >/dev/null || { echo "bind.sh: named is not installed (scripts/test-deps.sh installs bind9)" >&2; exit 1; }
    if ! running; then
      mkdir -p "$dir"
      chmod 700 "$dir"
      if [ ! -s "$key_file" ]; then
        (umask 077 && head -c 32 /dev/urandom | base64 > "$key_file")
      fi
      if [ ! -f "$dir/zone.db" ]; then
        cat > "$dir/zone.db" <<ZONE
\$TTL 60
@ IN SOA ns1.plinth.test. hostmaster.plinth.test. 1 10800 3600 604800 60
@ IN NS ns1.plinth.test.
ZONE
      fi
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
      echo $! > "$dir/named.pid.recorded"
      for _ in $(seq 1 200); do
        answers && break
        if ! running; then
          echo "bind.sh: named exited:" >&2
          tail -n 20 "$dir/named.log" >&2
          exit 1
        fi
        sleep 0.05
      done
      answers || { echo "bind.sh: named does not answer for $zone" >&2; tail -n 20 "$dir/named.log" >&2; exit 1; }
    fi
    env_lines
    ;;
  stop)
    if running; then
      pid=$(cat "$dir/named.pid.recorded")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/named.pid.recorded"
    ;;
  status)
    running
    ;;
  env)
    env_lines
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
