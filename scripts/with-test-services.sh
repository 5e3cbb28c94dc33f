#!/usr/bin/env bash
# Runs a command with the services the tests need: a throwaway PostgreSQL (scripts/pg.sh),
# whose admin URL is exported as PLINTH_TEST_DATABASE_URL. A server this script started is
# stopped again when the command ends; one that was already running is left running.
#   scripts/with-test-services.sh cargo nextest run --workspace
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

started_pg=0
if ! "$here/pg.sh" status; then
  started_pg=1
fi
PLINTH_TEST_DATABASE_URL=$("$here/pg.sh" start)
export PLINTH_TEST_DATABASE_URL
cleanup() {
  if [ "$started_pg" = 1 ]; then
    "$here/pg.sh" stop || true
  fi
}
trap cleanup EXIT
"$@"
