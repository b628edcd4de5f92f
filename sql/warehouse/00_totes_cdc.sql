-- The pipeline's own tables in the warehouse: schema version, checkpoints, dead letters.
-- Idempotent: `totes-cdc setup` and `totes-cdc run` apply it on every start.

CREATE SCHEMA IF NOT EXISTS totes_cdc;
CREATE SCHEMA IF NOT EXISTS staging;

CREATE TABLE IF NOT EXISTS totes_cdc.schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- The highest applied position of each writer (`apply` for the embedded pipeline), written in
-- the same transaction as the batch it describes.
CREATE TABLE IF NOT EXISTS totes_cdc.checkpoints (
    name text PRIMARY KEY,
    lsn pg_lsn NOT NULL,
    seq integer NOT NULL,
    commit_ts timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Events that could not be applied, with the reason; the pipeline went on without them.
CREATE TABLE IF NOT EXISTS totes_cdc.dead_letters (
    id bigserial PRIMARY KEY,
    source_table text NOT NULL,
    lsn pg_lsn,
    seq integer,
    op text,
    event jsonb NOT NULL,
    reason text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_position
    ON totes_cdc.dead_letters (source_table, lsn, seq, reason);

-- ISO 4217 currency names for dim_currency (filled from iso4217.sql).
CREATE TABLE IF NOT EXISTS totes_cdc.iso4217 (
    code text PRIMARY KEY,
    name text NOT NULL
);

-- A text date is a date when it is exactly YYYY-MM-DD and names a real day. Written without
-- exceptions so it can filter millions of rows cheaply; CASE keeps the cast behind the checks.
CREATE OR REPLACE FUNCTION totes_cdc.is_date(t text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN t IS NULL THEN false
        WHEN t !~ '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$' THEN false
        WHEN substr(t, 1, 4) = '0000' THEN false
        ELSE substr(t, 9, 2)::int <= extract(day FROM
            make_date(substr(t, 1, 4)::int, substr(t, 6, 2)::int, 1) + interval '1 month' - interval '1 day')
    END
$$;
