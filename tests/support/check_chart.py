"""Reads rendered chart manifests (YAML documents) on stdin, validates each against the
Kubernetes OpenAPI schemas of the given version (strict: unknown fields are errors) with
kubernetes-validate, and prints the documents as one JSON list. Prometheus Operator kinds have
no schema there and are only parsed.

usage: check_chart.py KUBERNETES_VERSION < manifests.yaml
"""
import json
import sys

import kubernetes_validate
import yaml

version = sys.argv[1]
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
errors = []
for d in docs:
    if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        continue
    try:
        kubernetes_validate.validate(d, version, strict=True)
    except Exception as e:  # the validator's errors carry the path of the bad field
        errors.append(f"{d.get('kind')} {d.get('metadata', {}).get('name')}: {e}")
if errors:
    sys.stderr.write("\n\n".join(errors) + "\n")
    sys.exit(1)
json.dump(docs, sys.stdout)
