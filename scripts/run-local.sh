#!/usr/bin/env bash
# `make run`: a throwaway PostgreSQL cluster under ./data/pg holding the totesys schema with
# generated rows, then totes-cdc capturing it. Ctrl-C stops everything; `make clean` removes ./data.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=${TOTES_CDC_PG_BIN:-/usr/lib/postgresql/15/bin}
data_root=$PWD/data
pgdata=$data_root/pg
port=${TOTES_CDC_PORT:-55432}
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi

pgctl() { "${as_pg[@]}" "$bin_dir/pg_ctl" -D "$pgdata" "$@"; }

if [ "${1:-}" = "--stop" ]; then
  [ -d "$pgdata" ] && pgctl -m fast -w stop >/dev/null 2>&1 || true
  exit 0
fi

mkdir -p "$data_root"
if [ ! -f "$pgdata/PG_VERSION" ]; then
  mkdir -p "$pgdata"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$data_root"
  "${as_pg[@]}" "$bin_dir/initdb" -D "$pgdata" -A trust -U postgres -E UTF8 --locale=C.UTF-8 --no-instructions >/dev/null
  cat >> "$pgdata/postgresql.auto.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$pgdata'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
CONF
fi
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$data_root"
pgctl -l "$data_root/pg.log" -w start >/dev/null
trap 'pgctl -m fast -w stop >/dev/null 2>&1 || true' EXIT

psql_() { psql -q -h 127.0.0.1 -p "$port" -U postgres "$@"; }
if ! psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'totesys'" | grep -q 1; then
  psql_ -d postgres -c "CREATE DATABASE totesys"
  psql_ -d totesys -f sql/source/totesys.sql
  psql_ -d totesys -f scripts/seed.sql
fi

if ! psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'warehouse'" | grep -q 1; then
  psql_ -d postgres -c "CREATE DATABASE warehouse"
fi
url="postgres://postgres@127.0.0.1:$port/totesys"
wh="postgres://postgres@127.0.0.1:$port/warehouse"
./target/release/totes-cdc setup --source-url "$url" --warehouse-url "$wh"
echo "running the pipeline: $url -> $wh (Ctrl-C stops)"
./target/release/totes-cdc run --source-url "$url" --warehouse-url "$wh" --state-dir "$data_root/state"
