#!/usr/bin/env bash
# Installs what the tests and `make run` need when it is missing: the PostgreSQL 15 server
# binaries (Debian package postgresql-15), Go with the sprig and YAML packages (the Helm chart
# tests render the chart with Helm's template engine), and the Python test tools. Idempotent;
# quiet when everything is there.
set -euo pipefail

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to install packages: $*" >&2; exit 1; fi
}

pg_bin=""
for d in "${TOTES_CDC_PG_BIN:-}" /usr/lib/postgresql/15/bin; do
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then pg_bin="$d"; break; fi
done
if [ -z "$pg_bin" ]; then
  echo "installing postgresql-15 (server binaries for the tests)..." >&2
  as_root apt-get update -qq
  # Do not let the package start a system-wide server: the tests start their own clusters.
  as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
fi

# Go's text/template with sprig: the engine Helm renders charts with (tests/support/chart_render).
if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/github.com/Masterminds/sprig ] \
    || [ ! -d /usr/share/gocode/src/gopkg.in/yaml.v3 ]; then
  echo "installing golang-go, sprig and yaml.v3 (the Helm chart tests)..." >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go \
    golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev >/dev/null
fi

# The AWS emulator (moto serves S3 and Kinesis), DuckDB (the independent Parquet reader the
# lake tests use), prometheus_client (the reference parser of the metrics format) and PyYAML
# (reads the alert rules in the tests), kubernetes-validate (the Kubernetes schemas the chart's
# manifests are checked against) and python-hcl2 (parses the Terraform module).
if ! command -v moto_server >/dev/null 2>&1 \
    || ! python3 -c "import duckdb, flask, prometheus_client, yaml, kubernetes_validate, hcl2" >/dev/null 2>&1; then
  echo "installing moto[server], duckdb, prometheus_client, pyyaml, kubernetes-validate and python-hcl2 from PyPI (test tools)..." >&2
  python3 -m pip install -q --disable-pip-version-check 'moto[server]' duckdb prometheus_client pyyaml \
    kubernetes-validate python-hcl2 >/dev/null
fi
