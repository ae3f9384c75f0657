#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster on 127.0.0.1 in a temp dir.
#   eval "$(.ci/pg.sh start)"   -> exports BACKFILL_TEST_DATABASE_URL and PG_DIR
#   .ci/pg.sh stop "$PG_DIR"
# initdb refuses root, so as root the cluster runs as the unprivileged user `postgres`
# (or `nobody`); otherwise as the current user.
set -euo pipefail

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    local user=postgres
    id "$user" >/dev/null 2>&1 || user=nobody
    runuser -u "$user" -- "$@"
  else
    "$@"
  fi
}

case "${1:-}" in
start)
  dir=$(mktemp -d /tmp/backfill-pg.XXXXXX)
  chmod 755 "$dir"
  if [ "$(id -u)" = 0 ]; then
    user=postgres; id "$user" >/dev/null 2>&1 || user=nobody
    chown "$user" "$dir"
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  as_owner initdb -D "$dir/data" -U backfill --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  as_owner pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >&2 \
    || { cat "$dir/server.log" >&2; exit 1; }
  echo "export PG_DIR=$dir"
  echo "export BACKFILL_TEST_DATABASE_URL=postgresql+psycopg://backfill@127.0.0.1:$port/postgres"
  ;;
stop)
  dir=${2:?usage: pg.sh stop DIR}
  as_owner pg_ctl -D "$dir/data" -m fast -w stop >&2 || true
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start | stop DIR" >&2
  exit 2
  ;;
esac
