#!/usr/bin/env bash
# The dependency rule (docs/ARCHITECTURE.md §2): plinth-domain knows no web framework,
# database, HTTP client or X.509 library. Fails when any of them is among its normal
# dependencies, direct or not.
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden='actix-web|actix-http|diesel|diesel-async|diesel_migrations|reqwest|x509-cert|tokio-postgres'
tree=$(cargo tree -p plinth-domain --edges normal --prefix none --format '{p}' --all-features)
hits=$(printf '%s\n' "$tree" | awk '{print $1}' | grep -Ex "$forbidden" | sort -u || true)
if [ -n "$hits" ]; then
  echo "dependency rule broken: plinth-domain depends on: $(echo $hits)" >&2
  echo "the domain must not know adapters or frameworks (docs/ARCHITECTURE.md §2)" >&2
  exit 1
fi
echo "dependency rule holds: plinth-domain depends on none of ${forbidden//|/, }"
