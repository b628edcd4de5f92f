"""Reads Parquet files with DuckDB (a reader that is not totes-cdc's) and prints, as JSON, each
file's schema (DuckDB's column types) and rows (every value cast to text by DuckDB).

usage: read_lake.py FILE...
"""
import json
import sys

import duckdb

con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
out = []
for path in sys.argv[1:]:
    schema = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()
    cols = [c[0] for c in schema]
    select = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in cols)
    rows = con.execute(f"SELECT {select} FROM read_parquet(?)", [path]).fetchall()
    out.append({
        "path": path,
        "schema": [[c[0], c[1]] for c in schema],
        "rows": [dict(zip(cols, r)) for r in rows],
    })
json.dump(out, sys.stdout)
