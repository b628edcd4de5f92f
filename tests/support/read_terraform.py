"""Parses every .tf file of a directory with python-hcl2 (an HCL2 parser that is not ours) and
prints them as one JSON object: {file name: blocks}, string literals without their quotes.
Exits non-zero, naming the file, when one does not parse.

usage: read_terraform.py DIR
"""
import glob
import json
import os
import sys

import hcl2


def plain(v):
    if isinstance(v, dict):
        return {plain(k): plain(x) for k, x in v.items() if k not in ("__comments__", "__is_block__")}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, str) and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1]
    return v


out = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.tf"))):
    try:
        with open(path) as f:
            out[os.path.basename(path)] = plain(hcl2.load(f))
    except Exception as e:
        sys.stderr.write(f"{path}: {e}\n")
        sys.exit(1)
json.dump(out, sys.stdout)
