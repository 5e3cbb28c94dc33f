#!/usr/bin/env bash
# Proves `make run` works from this checkout, as a newcomer would use it: starts it (on its own
# ports and .dev directory, so it never meets a stack already running), runs the curl it prints,
# expects a founded cluster, runs a VM's userdata shim (which fetches its bundle over HTTPS from the
# bootstrap listener, pinning the stack's CA), asks the stack's DNS server (dig) for the control
# plane's name, asks a second replica (scripts/run-replica.sh) for the cluster, then stops it all
# the way Ctrl-C does and checks that everything it started is gone. `make test` runs it last,
# twice: with PowerDNS, and with PLINTH_DNS=bind (BIND9 and RFC 2136 updates), where it also stops
# named and founds again: 201, dns_configured = false and the reason.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dns_server=${PLINTH_DNS:-powerdns}
export PLINTH_DEV_DIR=${PLINTH_DEV_DIR:-$root/.dev/make-run-check-$dns_server}
export PLINTH_PORT=${PLINTH_PORT:-18080} COMPUTE_PORT=${COMPUTE_PORT:-18082}
export PLINTH_BOOTSTRAP_PORT=${CHECK_BOOTSTRAP_PORT:-18443}
export PLINTH_PG_PORT=${CHECK_PG_PORT:-55433}
export PLINTH_PDNS_DNS_PORT=${CHECK_PDNS_DNS_PORT:-15354} PLINTH_PDNS_API_PORT=${CHECK_PDNS_API_PORT:-18083}
export PLINTH_BIND_PORT=${CHECK_BIND_PORT:-15356}
rm -rf "$PLINTH_DEV_DIR"
mkdir -p "$PLINTH_DEV_DIR"
log="$PLINTH_DEV_DIR/make-run.log"

fail() {
  echo "check-make-run: $*" >&2
  echo "--- make run's output" >&2
  tail -n 40 "$log" >&2 || true
  exit 1
}

# A session of its own: stopping the whole process group is what Ctrl-C in a terminal does.
setsid make --no-print-directory run >"$log" 2>&1 &
group=$!
stop_stack() {
  kill -INT -- "-$group" 2>/dev/null || true
  for _ in $(seq 1 300); do
    pgrep -g "$group" >/dev/null 2>&1 || return 0
    sleep 0.1
  done
  echo "check-make-run: the stack did not stop within 30s; killing it" >&2
  kill -KILL -- "-$group" 2>/dev/null || true
  return 1
}
trap 'stop_stack || true' EXIT

for _ in $(seq 1 1800); do
  grep -q '^curl ' "$log" && break
  kill -0 "$group" 2>/dev/null || fail "make run exited before the stack was up"
  sleep 0.2
done
command=$(grep '^curl ' "$log") || fail "make run printed no curl within 6 minutes"

status=$(eval "$command -o '$PLINTH_DEV_DIR/answer.json' -w '%{http_code}'")
[ "$status" = 201 ] || fail "the printed curl answered $status: $(cat "$PLINTH_DEV_DIR/answer.json")"
python3 - "$PLINTH_DEV_DIR/answer.json" "$PLINTH_DEV_DIR/stack.env" <<'PY' || fail "the answer is not a founded cluster"
import json, sys
answer = json.load(open(sys.argv[1]))
stack = dict(line.strip().split("=", 1) for line in open(sys.argv[2]) if "=" in line)
assert answer["name"] == "demo", answer
assert len(answer["nodes"]) == 3 and len(answer["vm_ids"]) == 3, answer
assert answer["admin_kubeconfig"].startswith("apiVersion: v1"), "no kubeconfig"
for key in ("PLINTH_URL", "COMPUTE_URL", "COMPUTE_TOKEN", "DATABASE_URL", "DNS_ZONE"):
    assert key in stack, f"{key} missing from stack.env"
if "DNS_PORT" in stack:
    assert answer["dns_configured"] is True, answer["dns_error"]
print(f"check-make-run: founded {answer['cluster_id']} (dns_configured={answer['dns_configured']})")
PY

# A VM's boot: its userdata shim fetches the node's bundle over HTTPS (the stack's CA pinned),
# checks it and unpacks it.
python3 - "$PLINTH_DEV_DIR/answer.json" "$PLINTH_DEV_DIR/stack.env" "$PLINTH_DEV_DIR/shim.sh" <<'PY' || fail "cannot read the first VM's userdata"
import json, sys, urllib.request
answer = json.load(open(sys.argv[1]))
stack = dict(line.strip().split("=", 1) for line in open(sys.argv[2]) if "=" in line)
request = urllib.request.Request(
    f"{stack['COMPUTE_URL']}/v1/vms/{answer['vm_ids'][0]}",
    headers={"Authorization": f"Bearer {stack['COMPUTE_TOKEN']}"},
)
shim = json.load(urllib.request.urlopen(request, timeout=10))["user_data"]
assert "https://" in shim and "--cacert" in shim, "the shim does not fetch over pinned HTTPS"
open(sys.argv[3], "w").write(shim)
PY
mkdir -p "$PLINTH_DEV_DIR/vm-1"
PLINTH_BOOTSTRAP_ROOT="$PLINTH_DEV_DIR/vm-1" PLINTH_START_KUBELET=no sh "$PLINTH_DEV_DIR/shim.sh" \
  >"$PLINTH_DEV_DIR/shim.log" 2>&1 || fail "the shim failed: $(tail -n 5 "$PLINTH_DEV_DIR/shim.log")"
for file in etc/kubernetes/pki/ca.crt etc/kubernetes/manifests/etcd.yaml etc/kubernetes/kubelet.conf; do
  [ -s "$PLINTH_DEV_DIR/vm-1/$file" ] || fail "the shim unpacked no $file"
done
echo "check-make-run: a VM's shim fetched its bundle over HTTPS, pinning the stack's CA"

# The printed dig: the DNS server answers the control plane's name with the nodes' addresses.
if grep -q '^DNS_PORT=' "$PLINTH_DEV_DIR/stack.env"; then
  dns_port=$(sed -n 's/^DNS_PORT=//p' "$PLINTH_DEV_DIR/stack.env")
  grep -q "^dig @127.0.0.1 -p $dns_port " "$log" || fail "make run printed no dig for port $dns_port"
  python3 - "$PLINTH_DEV_DIR/answer.json" "$dns_port" <<'PY' || fail "the DNS server does not answer the control plane's name"
import json, subprocess, sys
answer = json.load(open(sys.argv[1]))
name = answer["control_plane_dns_name"]
dig = subprocess.run(["dig", "@127.0.0.1", "-p", sys.argv[2], "+short", "+tries=1", "+time=2", name, "A"],
                     capture_output=True, text=True, check=True).stdout.split()
expected = sorted(node["public_ipv4"] for node in answer["nodes"])
assert sorted(dig) == expected, f"dig {name} A: {dig}, expected {expected}"
print(f"check-make-run: dig {name} A answers {', '.join(sorted(dig))}")
PY
fi

# With BIND stopped, a founding still answers 201, saying DNS was not configured and why.
if [ "$dns_server" = bind ]; then
  PLINTH_BIND_DIR="$PLINTH_DEV_DIR/bind" scripts/bind.sh stop
  status=$(eval "${command/demo/demo-2} -o '$PLINTH_DEV_DIR/answer-2.json' -w '%{http_code}'")
  [ "$status" = 201 ] || fail "with BIND stopped, the curl answered $status: $(cat "$PLINTH_DEV_DIR/answer-2.json")"
  python3 - "$PLINTH_DEV_DIR/answer-2.json" <<'PY' || fail "with BIND stopped, the answer does not say DNS failed"
import json, sys
answer = json.load(open(sys.argv[1]))
assert answer["dns_configured"] is False, answer
assert answer["dns_error"].startswith("DNS server unavailable: publishing records"), answer["dns_error"]
print(f"check-make-run: with BIND stopped, 201 and dns_configured=false ({answer['dns_error']})")
PY
fi

# A second replica on the stack (scripts/run-replica.sh) serves the cluster the first one founded.
replica_port=${CHECK_REPLICA_PORT:-18090}
scripts/run-replica.sh "$replica_port" >"$PLINTH_DEV_DIR/replica.log" 2>&1 &
replica=$!
trap 'kill "$replica" 2>/dev/null || true; stop_stack || true' EXIT
for _ in $(seq 1 300); do
  curl -fsS -o /dev/null "http://127.0.0.1:$replica_port/readyz" 2>/dev/null && break
  kill -0 "$replica" 2>/dev/null || fail "run-replica.sh exited: $(tail -n 5 "$PLINTH_DEV_DIR/replica.log")"
  sleep 0.1
done
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cluster_id"])' "$PLINTH_DEV_DIR/answer.json")
status=$(curl -sS -o "$PLINTH_DEV_DIR/replica-answer.json" -w '%{http_code}' \
  -H "Authorization: Bearer $(cat "$PLINTH_DEV_DIR/token")" "http://127.0.0.1:$replica_port/clusters/$id")
[ "$status" = 200 ] || fail "the second replica answered $status for the cluster: $(cat "$PLINTH_DEV_DIR/replica-answer.json")"
grep -q '"status":"ready"' "$PLINTH_DEV_DIR/replica-answer.json" ||
  fail "the second replica does not show the cluster ready: $(cat "$PLINTH_DEV_DIR/replica-answer.json")"
kill -INT "$replica"
wait "$replica" || true
echo "check-make-run: a second replica (run-replica.sh) serves the same clusters"

trap - EXIT
stop_stack || fail "the stack did not stop"
grep -q 'run: stopped' "$log" || fail "make run did not report stopping"
for port in "$PLINTH_PORT" "$PLINTH_BOOTSTRAP_PORT" "$COMPUTE_PORT" "$PLINTH_PDNS_API_PORT" \
  "$replica_port" "$((replica_port + 1))"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "something still listens on port $port"
  fi
done
PLINTH_PG_DIR="$PLINTH_DEV_DIR/pg" scripts/pg.sh status && fail "PostgreSQL is still running"
PLINTH_BIND_DIR="$PLINTH_DEV_DIR/bind" scripts/bind.sh status && fail "named is still running"
PLINTH_PDNS_DIR="$PLINTH_DEV_DIR/pdns" scripts/pdns.sh status && fail "PowerDNS is still running"
echo "check-make-run: make run works, and Ctrl-C stopped everything it started"
