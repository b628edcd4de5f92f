#!/usr/bin/env bash
# The deployment under the tools its users run: helm lint, checkov (the rendered chart and the
# Terraform module), hadolint (the Dockerfile), yamllint, actionlint (the workflows) and
# terraform fmt. Every check runs; the script fails when any finds something. A finding is fixed
# or suppressed where it is, with a one-line reason (checkov:skip comments in terraform/,
# checkov.io/skip annotations in the chart).
#
# usage: scripts/deploy-check.sh [CHECK...]   (default: all of them)
# The paths may be pointed elsewhere (the tests check broken copies): TOTES_CDC_CHART,
# TOTES_CDC_TERRAFORM, TOTES_CDC_DOCKERFILE, TOTES_CDC_WORKFLOWS.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
chart="${TOTES_CDC_CHART:-$root/helm/totes-cdc}"
terraform_dir="${TOTES_CDC_TERRAFORM:-$root/terraform}"
dockerfile="${TOTES_CDC_DOCKERFILE:-$root/Dockerfile}"
workflows="${TOTES_CDC_WORKFLOWS:-$root/.github/workflows}"
helm="$(command -v helm || echo "$tools/bin/helm")"
venv="$tools/venv/bin"
# checkov works offline: no policy metadata download, no mapping lookups.
export BC_SKIP_MAPPING=TRUE
checks=("$@")
[ ${#checks[@]} -eq 0 ] && checks=(helm checkov-chart checkov-terraform hadolint yamllint actionlint terraform-fmt)

failed=()
run() {
  local name="$1"; shift
  echo "== $name"
  if ! "$@"; then failed+=("$name"); fi
}

rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT

helm_checks() {
  "$helm" lint --strict "$chart" --set mode=embedded \
    && "$helm" lint --strict "$chart" --set mode=streaming
}
checkov_chart() {
  "$helm" template totes-cdc "$chart" --namespace cdc > "$rendered/embedded.yaml" \
    && "$helm" template totes-cdc "$chart" --namespace cdc --set mode=streaming \
         --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
         > "$rendered/streaming.yaml" \
    && "$venv/checkov" -d "$rendered" --framework kubernetes --quiet --compact --skip-download
}
terraform_fmt() {
  if ! command -v terraform >/dev/null 2>&1; then
    echo "terraform is not installed on this machine: skipped (deps.sh installs it where apt can)"
    return 0
  fi
  terraform fmt -check -recursive -diff "$terraform_dir" 2>/dev/null
}
yaml_files() {
  # The repository's YAML; the chart's templates are Go templates, which helm lint checks.
  yamllint -c "$root/.yamllint.yml" "$chart/values.yaml" "$chart/Chart.yaml" "$root/deploy" "$workflows"
}

for c in "${checks[@]}"; do
  case "$c" in
    helm) run "helm lint (both modes)" helm_checks ;;
    checkov-chart) run "checkov: the rendered chart" checkov_chart ;;
    checkov-terraform) run "checkov: terraform" "$venv/checkov" -d "$terraform_dir" --framework terraform --quiet --compact --skip-download ;;
    hadolint) run "hadolint: Dockerfile" "$venv/hadolint" "$dockerfile" ;;
    yamllint) PATH="$venv:$PATH" run "yamllint" yaml_files ;;
    actionlint) run "actionlint: workflows" "$venv/actionlint" "$workflows"/*.yml ;;
    terraform-fmt) run "terraform fmt -check" terraform_fmt ;;
    *) echo "unknown check $c" >&2; exit 2 ;;
  esac
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "deployment checks failed: ${failed[*]}" >&2
  exit 1
fi
echo "deployment checks passed: ${checks[*]}"
