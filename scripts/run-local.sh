#!/usr/bin/env bash
# `make run`: the whole pipeline on a laptop, no cloud account needed. A throwaway PostgreSQL
# cluster under ./data/pg holds the totesys source (created and seeded by `totes-cdc generate`)
# and the warehouse; `totes-cdc run` captures the source into the warehouse and the Parquet
# lake (./data/lake) while `totes-cdc generate` keeps writing like the real source. Ctrl-C
# stops everything (with a summary); `make clean` removes ./data.
#
# Environment: TOTES_CDC_BIN (the binary), TOTES_CDC_DATA (data directory), TOTES_CDC_PORT
# (the cluster's port), TOTES_CDC_RATE (source transactions per second).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${TOTES_CDC_BIN:-./target/release/totes-cdc}
pg_bin=${TOTES_CDC_PG_BIN:-/usr/lib/postgresql/15/bin}
data_root=$(mkdir -p "${TOTES_CDC_DATA:-./data}" && cd "${TOTES_CDC_DATA:-./data}" && pwd)
pgdata=$data_root/pg
port=${TOTES_CDC_PORT:-55432}
rate=${TOTES_CDC_RATE:-20}
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi

pgctl() { "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pgdata" "$@"; }

if [ "${1:-}" = "--stop" ]; then
  [ -d "$pgdata" ] && pgctl -m fast -w stop >/dev/null 2>&1 || true
  exit 0
fi

if [ ! -f "$pgdata/PG_VERSION" ]; then
  mkdir -p "$pgdata"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$pgdata"
  "${as_pg[@]}" "$pg_bin/initdb" -D "$pgdata" -A trust -U postgres -E UTF8 --locale=C.UTF-8 --no-instructions >/dev/null
  cat >> "$pgdata/postgresql.auto.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$pgdata'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
CONF
fi
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$pgdata"
pgctl -l "$pgdata/server.log" -w start >/dev/null
generator=""
cleanup() {
  [ -n "$generator" ] && kill "$generator" 2>/dev/null && wait "$generator" 2>/dev/null
  pgctl -m fast -w stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

src="postgres://postgres@127.0.0.1:$port/totesys"
wh="postgres://postgres@127.0.0.1:$port/warehouse"
for db in totesys warehouse; do
  "$pg_bin/psql" -qAt -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
    || "$pg_bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE $db"
done
"$bin" generate --init --rate 0 --source-url "$src"
"$bin" setup --source-url "$src" --warehouse-url "$wh" >/dev/null
"$bin" generate --source-url "$src" --rate "$rate" --log warn >"$data_root/generate.log" 2>&1 &
generator=$!
cat <<MSG
source    $src   (totesys, $rate transactions/s from totes-cdc generate)
warehouse $wh    (psql $wh)
lake      $data_root/lake   (duckdb: SELECT * FROM '$data_root/lake/changes/*/*/*.parquet')
Ctrl-C stops.
MSG
"$bin" run --source-url "$src" --warehouse-url "$wh" --state-dir "$data_root/state" \
  --lake "$data_root/lake" --progress --log warn
