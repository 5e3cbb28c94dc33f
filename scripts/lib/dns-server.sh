# Sourced by the scripts that run a DNS server of their own for the tests and the local stack
# (pdns.sh, bind.sh, knot.sh). A server is known by the PID file its script wrote; only that
# process is ever signalled.

# dns_server_running PIDFILE: exit 0 if the recorded process runs.
dns_server_running() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# dns_server_wait NAME PIDFILE LOG CHECK...: runs CHECK until it succeeds, for 10 s at most;
# fails with the log's last lines if the process exits first or CHECK never succeeds.
dns_server_wait() {
  local name=$1 pidfile=$2 log=$3
  shift 3
  for _ in $(seq 1 200); do
    "$@" && return 0
    if ! dns_server_running "$pidfile"; then
      echo "$name exited:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.05
  done
  "$@" && return 0
  echo "$name did not come up:" >&2
  tail -n 20 "$log" >&2
  return 1
}

# dns_server_stop PIDFILE: SIGTERM to the recorded process, SIGKILL after 5 s; forgets it.
dns_server_stop() {
  if dns_server_running "$1"; then
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

# dns_zone_answers PORT ZONE: exit 0 if 127.0.0.1:PORT answers the zone's SOA.
dns_zone_answers() {
  dig @127.0.0.1 -p "$1" +tries=1 +time=1 +short "$2" SOA 2>/dev/null | grep -q .
}

# dns_primary_files DIR: the zone file (an SOA and an NS out of the zone, nothing else) and a
# random 32-byte TSIG secret in base64 (DIR/tsig.secret, mode 600), each made once.
dns_primary_files() {
  local dir=$1
  mkdir -p "$dir"
  chmod 700 "$dir"
  if [ ! -s "$dir/tsig.secret" ]; then
    (umask 077 && head -c 32 /dev/urandom | base64 > "$dir/tsig.secret")
  fi
  if [ ! -f "$dir/zone.db" ]; then
    cat > "$dir/zone.db" <<'ZONE'
$TTL 60
@ IN SOA ns1.plinth.test. hostmaster.plinth.test. 1 10800 3600 604800 60
@ IN NS ns1.plinth.test.
ZONE
  fi
}
