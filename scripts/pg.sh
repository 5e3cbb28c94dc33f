#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for the tests and the local stack. It runs as the `postgres` user
# (the server refuses to run as root), listens on 127.0.0.1 only, and keeps its data under
# PLINTH_PG_DIR. It trades durability for speed (fsync off): never point it at data you keep.
#
#   scripts/pg.sh start   initialise if needed, start, create the `plinth` role; prints the URL
#   scripts/pg.sh stop    fast shutdown of this data directory's server (if it runs)
#   scripts/pg.sh status  exit 0 if it runs
#   scripts/pg.sh url     the admin URL (role `plinth`, database `postgres`)
#   scripts/pg.sh createdb NAME   create database NAME owned by `plinth` unless it exists
#
# Settings (environment): PLINTH_PG_DIR (default <repo>/.dev/pg), PLINTH_PG_PORT (default: the
# port this data directory's server last used, else the first free one from 55432, so another
# checkout's server on 55432 is left alone).
#
# The server runs as `postgres`, which must be able to reach its data directory. A checkout in a
# directory only root can enter (a `mktemp -d`, /root/…) cannot hold it there; then the data lives
# in /var/tmp/plinth-pg-<hash of PLINTH_PG_DIR> instead, and PLINTH_PG_DIR/data links to it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
requested=${PLINTH_PG_DIR:-$root/.dev/pg}
bin=${PLINTH_PG_BIN:-/usr/lib/postgresql/15/bin}
role=plinth
password=plinth

# Run a PostgreSQL program as the postgres user (directly when we already are that user).
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Whether the postgres user can create and use files in directory $1.
postgres_can_use() {
  [ "$(id -u)" != 0 ] || runuser -u postgres -- test -w "$1" -a -x "$1" 2>/dev/null
}

# Where the server's files are: PLINTH_PG_DIR itself, or the fallback it links to.
resolve_dir() {
  local fallback
  fallback=/var/tmp/plinth-pg-$(printf '%s' "$requested" | sha256sum | cut -c1-12)
  if [ -d "$fallback" ] && [ -L "$requested/data" ]; then
    dir=$fallback
    return
  fi
  mkdir -p "$requested"
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$requested"
  fi
  if postgres_can_use "$requested"; then
    dir=$requested
    return
  fi
  mkdir -p "$fallback"
  chown postgres:postgres "$fallback"
  chmod 0700 "$fallback"
  if ! postgres_can_use "$fallback"; then
    echo "pg.sh: the postgres user can reach neither $requested nor $fallback." >&2
    echo "pg.sh: set PLINTH_PG_DIR to a directory every parent of which others may enter" >&2
    echo "pg.sh: (chmod o+x), e.g. PLINTH_PG_DIR=/var/tmp/plinth-pg." >&2
    exit 1
  fi
  ln -sfn "$fallback/data" "$requested/data"
  echo "pg.sh: the postgres user cannot reach $requested; the data lives in $fallback" >&2
  dir=$fallback
}

if [ -d "$requested" ] || [ "${1:-}" = start ]; then
  resolve_dir
else
  dir=$requested
fi

# Whether something listens on 127.0.0.1:$1.
port_taken() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The port: asked for, or the one this data directory's server was started on, or (to start it)
# the first free one from 55432.
if [ -n "${PLINTH_PG_PORT:-}" ]; then
  port=$PLINTH_PG_PORT
elif [ -f "$dir/port" ]; then
  port=$(cat "$dir/port")
else
  port=55432
fi
if [ "${1:-}" = start ] && [ -z "${PLINTH_PG_PORT:-}" ] && \
   ! { [ -f "$dir/data/postmaster.pid" ] && as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; }; then
  for _ in $(seq 1 50); do
    port_taken "$port" || break
    port=$((port + 1))
  done
fi
url="postgres://$role:$password@127.0.0.1:$port/postgres"

running() {
  [ -f "$dir/data/postmaster.pid" ] && as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

case "${1:-}" in
  start)
    [ -x "$bin/postgres" ] || { echo "pg.sh: PostgreSQL 15 is not installed under $bin" >&2; exit 1; }
    if ! running; then
      if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust \
          --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
          || { cat "$dir/initdb.log" >&2; exit 1; }
      fi
      as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null || { tail -n 20 "$dir/server.log" >&2; exit 1; }
      echo "$port" >"$dir/port"
    fi
    as_postgres "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
    CREATE ROLE $role LOGIN CREATEDB PASSWORD '$password';
  END IF;
END \$\$;
SQL
    echo "$url"
    ;;
  stop)
    if running; then
      as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
    fi
    ;;
  status)
    running
    ;;
  createdb)
    name=${2:?usage: $0 createdb NAME}
    case "$name" in *[!a-z0-9_]*) echo "pg.sh: database names here are [a-z0-9_]+" >&2; exit 2;; esac
    exists=$(as_postgres "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -qtA \
      -c "SELECT 1 FROM pg_database WHERE datname = '$name'")
    if [ "$exists" != 1 ]; then
      as_postgres "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE $name OWNER $role" >/dev/null
    fi
    ;;
  url)
    echo "$url"
    ;;
  *)
    echo "usage: $0 start|stop|status|url|createdb NAME" >&2
    exit 2
    ;;
esac
