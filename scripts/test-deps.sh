#!/usr/bin/env bash
# Installs the real programs the tests drive, from Debian's packages, when they are missing:
# etcd and etcdctl (3-member TLS clusters), openssl, PowerDNS with its SQLite backend (and the
# sqlite3 shell that loads its schema), BIND9's named and Knot DNS's knotd (the RFC 2136
# adapter's servers), dig. kubectl is expected on the machine (it is not in
# Debian's main archive). Idempotent; `make test` runs it first.
set -euo pipefail

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v pdns_server >/dev/null 2>&1 || need+=(pdns-server)
[ -f /usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql ] || need+=(pdns-backend-sqlite3)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v named >/dev/null 2>&1 || need+=(bind9)
command -v knotd >/dev/null 2>&1 || need+=(knot)
command -v dig >/dev/null 2>&1 || need+=(bind9-dnsutils)
command -v curl >/dev/null 2>&1 || need+=(curl)

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "test-deps: ${need[*]} missing; run as root (or install them) to continue" >&2
    exit 1
  fi
  # etcd-server, pdns-server, bind9 and knot ship init scripts: keep invoke-rc.d from starting
  # system-wide servers (etcd on 127.0.0.1:2379, PowerDNS and named on :53) while they install.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
  echo "test-deps: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v kubectl >/dev/null 2>&1; then
  echo "test-deps: kubectl is missing; the Go TLS tests need it (it is on the project's machines)" >&2
  exit 1
fi
echo "test-deps: ready ($(etcd --version | head -n1), $(openssl version | cut -d" " -f1-2), $(pdns_server --version 2>&1 | grep -m1 -o 'PowerDNS Authoritative Server [0-9.]*'), $(named -v | cut -d" " -f1-2), $(knotd --version | sed "s/.*version /Knot DNS /"), $(kubectl version --client 2>/dev/null | head -n1))"
