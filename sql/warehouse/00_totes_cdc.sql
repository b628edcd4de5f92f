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
ALTER TABLE totes_cdc.dead_letters ADD COLUMN IF NOT EXISTS origin text;
-- Why, as a kind: invalid_date (the model's SQL), refused_value (the staging mirror refused
-- it), unparseable_record (a Kinesis record that is not an envelope). NULL before version 2.
ALTER TABLE totes_cdc.dead_letters ADD COLUMN IF NOT EXISTS kind text;
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_position
    ON totes_cdc.dead_letters (source_table, lsn, seq, reason);
-- Records that never became events (a Kinesis record that does not parse): where they came from.
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_origin
    ON totes_cdc.dead_letters (origin) WHERE origin IS NOT NULL;

-- Per Kinesis shard: the last applied sequence number, written in the same transaction as the
-- batch it ends; `ended` once the shard is closed and read to its end (its children may start).
CREATE TABLE IF NOT EXISTS totes_cdc.shard_checkpoints (
    stream text NOT NULL,
    shard_id text NOT NULL,
    sequence_number text,
    ended boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, shard_id)
);

-- Per staging mirror: the position of the newest truncate applied. A change older than it,
-- arriving later (through another Kinesis shard), lands as the tombstone the truncate made.
CREATE TABLE IF NOT EXISTS totes_cdc.truncations (
    mirror text PRIMARY KEY,
    lsn pg_lsn NOT NULL,
    seq integer NOT NULL
);

-- Shard leases: the consumer that reads a shard (`owner`, NULL once released) until
-- `expires_at` (renewed a few times per lease timeout). `epoch` grows with every take: a batch
-- commits only while its owner and epoch are still the lease's (the fencing token).
CREATE TABLE IF NOT EXISTS totes_cdc.shard_leases (
    stream text NOT NULL,
    shard_id text NOT NULL,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (stream, shard_id)
);

-- Consumers alive (heartbeat), for sharing the shards evenly.
CREATE TABLE IF NOT EXISTS totes_cdc.consumers (
    id text PRIMARY KEY,
    stream text NOT NULL,
    heartbeat timestamptz NOT NULL DEFAULT now()
);

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

-- The lake's committed files, recorded in the transaction of the batch that wrote them: a
-- reader lists exactly these. Files of a batch that never committed are not here.
CREATE TABLE IF NOT EXISTS totes_cdc.lake_files (
    path text PRIMARY KEY,
    kind text NOT NULL,
    table_name text NOT NULL,
    first_lsn pg_lsn NOT NULL,
    first_seq integer NOT NULL,
    last_lsn pg_lsn NOT NULL,
    last_seq integer NOT NULL,
    rows integer NOT NULL,
    bytes bigint NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS lake_files_table ON totes_cdc.lake_files (kind, table_name, last_lsn, last_seq);
-- Who wrote it: the embedded pipeline's checkpoint name, or `shard:<id>` for a Kinesis consumer
-- (NULL before version 3). A writer's positions of a table only grow, so its highest committed
-- position tells redelivered events apart.
ALTER TABLE totes_cdc.lake_files ADD COLUMN IF NOT EXISTS writer text;
CREATE INDEX IF NOT EXISTS lake_files_writer ON totes_cdc.lake_files (writer, table_name, last_lsn, last_seq)
    WHERE kind = 'changes';

-- Files of a batch written under a hidden name (`_staging/...staged`), recorded before the
-- write. The batch's transaction marks them committed; they are then published (moved to their
-- place) and forgotten. After a crash the writer (or a shard's next owner) publishes the
-- committed ones and removes the others, so readers never see a file of an uncommitted batch.
CREATE TABLE IF NOT EXISTS totes_cdc.lake_staged (
    staged text PRIMARY KEY,
    path text NOT NULL,
    writer text NOT NULL,
    committed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS lake_staged_writer ON totes_cdc.lake_staged (writer);
-- A file kept here rather than in the store (the star's files, written inside the batch's
-- transaction so that no lake upload happens while it holds the star refresh's lock); it is
-- uploaded to its place after the commit, and the row deleted.
ALTER TABLE totes_cdc.lake_staged ADD COLUMN IF NOT EXISTS data bytea;

-- Before version 3, files were written in place, listed here until their batch committed; the
-- next start removes those that never did.
CREATE TABLE IF NOT EXISTS totes_cdc.lake_pending (
    path text PRIMARY KEY,
    -- events in the batch: after a restart the same events form the same batch again, and its
    -- files are rewritten under the same names with the same bytes
    batch_events integer NOT NULL,
    -- the writer: `apply` for the embedded pipeline, `shard:<id>` for a Kinesis consumer
    writer text NOT NULL DEFAULT 'apply',
    created_at timestamptz NOT NULL DEFAULT now()
);
