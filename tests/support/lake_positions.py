"""Reads a lake directory the way an analyst's DuckDB would (globbing it) and prints, as JSON,
every Parquet file the glob `**/*.parquet` finds and the position (table, _lsn, _seq) of every
row of the changes files.

usage: lake_positions.py LAKE_DIR
"""
import json
import os
import sys

import duckdb

root = sys.argv[1]
con = duckdb.connect()
files = [r[0] for r in con.execute("SELECT file FROM glob(?)", [os.path.join(root, "**", "*.parquet")]).fetchall()]
changes = [f for f in files if f.startswith(os.path.join(root, "changes") + "/")]
positions = []
if changes:
    positions = con.execute(
        """SELECT regexp_extract(filename, 'changes/([^/]+)/', 1), _lsn::VARCHAR, _seq
           FROM read_parquet(?, filename = true, union_by_name = true)""",
        [changes],
    ).fetchall()
json.dump({
    "files": sorted(os.path.relpath(f, root) for f in files),
    "positions": [[t, l, s] for t, l, s in positions],
}, sys.stdout)
