#!/usr/bin/env bash
# A second plinth replica on the `make run` stack: the same database, compute service, DNS and
# keys, on its own port, in the foreground until Ctrl-C. Replicas share nothing but PostgreSQL:
# either answers every route, and if one dies (try `kill -9`), the other's recovery rolls back
# the foundings it was running within `recovery.lease_secs` plus a scan. Its VMs fetch their
# bundles over HTTPS from its own bootstrap listener (BOOTSTRAP_PORT, default PORT + 1), with the
# stack's bootstrap certificate and CA.
#
#   make run                     # in one terminal
#   scripts/run-replica.sh 8090  # in another
set -euo pipefail

port=${1:?usage: scripts/run-replica.sh PORT [BOOTSTRAP_PORT]}
bootstrap_port=${2:-$((port + 1))}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dev=${PLINTH_DEV_DIR:-$root/.dev}
if [ ! -f "$dev/stack.env" ]; then
  echo "run-replica: $dev/stack.env is missing: start the stack with \`make run\` first" >&2
  exit 1
fi
# shellcheck disable=SC1091
source "$dev/stack.env"
if ! curl -fsS -o /dev/null "$PLINTH_URL/readyz" 2>/dev/null; then
  echo "run-replica: the stack's plinth ($PLINTH_URL) does not answer: is \`make run\` up?" >&2
  exit 1
fi

export PLINTH_ENV=dev
export PLINTH__SERVER__LISTEN="127.0.0.1:$port"
export PLINTH__DATABASE__URL="$DATABASE_URL"
export PLINTH__MASTER_KEYS__FILE="$dev/master-keys"
export PLINTH__AUTH__JWKS_FILE="$dev/jwks.json"
export PLINTH__AUTH__DEV_SIGNING_KEY_FILE="$dev/jwt-signing.pem"
export PLINTH__COMPUTE__BASE_URL="$COMPUTE_URL"
export PLINTH__COMPUTE__TOKEN="$COMPUTE_TOKEN"
export PLINTH__FOUNDING__DNS_ZONE="$DNS_ZONE"
export PLINTH__SERVER__BOOTSTRAP_LISTEN="127.0.0.1:$bootstrap_port"
export PLINTH__SERVER__BOOTSTRAP_TLS_CERT_FILE="$dev/bootstrap.crt"
export PLINTH__SERVER__BOOTSTRAP_TLS_KEY_FILE="$dev/bootstrap.key"
export PLINTH__FOUNDING__BOOTSTRAP_BASE_URL="https://127.0.0.1:$bootstrap_port"
export PLINTH__FOUNDING__BOOTSTRAP_CA_FILE="$BOOTSTRAP_CA"
export PLINTH__DNS__MODE="${DNS_MODE:-disabled}"
case "${DNS_MODE:-disabled}" in
  powerdns)
    export PLINTH__DNS__POWERDNS__API_URL="$PDNS_API_URL"
    export PLINTH__DNS__POWERDNS__API_KEY="$PDNS_API_KEY"
    ;;
  rfc2136)
    export PLINTH__DNS__RFC2136__SERVER="127.0.0.1:$DNS_PORT"
    export PLINTH__DNS__RFC2136__KEY_NAME="$TSIG_KEY_NAME"
    export PLINTH__DNS__RFC2136__KEY_SECRET_FILE="$TSIG_KEY_FILE"
    ;;
esac
echo "run-replica: a second plinth on http://127.0.0.1:$port, bootstrap on https://127.0.0.1:$bootstrap_port (Ctrl-C stops it)"
exec target/debug/plinth serve
