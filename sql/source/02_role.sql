-- A dedicated role for totes-cdc: it may replicate and read the replicated tables.
-- Replace the password; on RDS/Aurora use `GRANT rds_replication TO totes_cdc;` instead of
-- the REPLICATION attribute.

CREATE ROLE totes_cdc WITH LOGIN REPLICATION PASSWORD 'change-me';
GRANT USAGE ON SCHEMA public TO totes_cdc;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO totes_cdc;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO totes_cdc;
-- The heartbeat that keeps the slot moving on an idle database:
GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO totes_cdc;
