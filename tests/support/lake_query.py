"""Runs one SQL query over a lake's changes files the way an analyst's DuckDB would: every
`changes/**/*.parquet` the glob finds, read with `union_by_name` (files written before and
after a column was added or widened read as one table) as the view `changes`, with the
column `tbl` holding the table folder. Prints the rows as JSON lists of strings (NULL as null).

usage: lake_query.py LAKE_DIR SQL
"""
import json
import os
import sys

import duckdb

root, sql = sys.argv[1], sys.argv[2]
con = duckdb.connect()
files = [r[0] for r in con.execute("SELECT file FROM glob(?)", [os.path.join(root, "changes", "**", "*.parquet")]).fetchall()]
listed = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
con.execute(
    "CREATE VIEW changes AS SELECT regexp_extract(filename, 'changes/([^/]+)/', 1) AS tbl, * "
    f"FROM read_parquet({listed}, filename = true, union_by_name = true)"
)
rows = con.execute(sql).fetchall()
json.dump([[None if v is None else str(v) for v in r] for r in rows], sys.stdout)
