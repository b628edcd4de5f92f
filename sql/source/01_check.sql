-- What `totes-cdc setup` checks on the source, for a DBA to run by hand (psql -f).

-- 1. Logical decoding: must say 'logical' (set wal_level = logical and restart the server;
--    on RDS/Aurora: rds.logical_replication = 1 in the parameter group).
SHOW wal_level;

-- 2. Room for the slot and its sender (each must be at least 1 more than in use).
SHOW max_replication_slots;
SHOW max_wal_senders;

-- 3. Tables that cannot identify their rows in updates and deletes: no primary key and
--    REPLICA IDENTITY DEFAULT, or REPLICA IDENTITY NOTHING. Fix each with a primary key or
--    ALTER TABLE ... REPLICA IDENTITY FULL.
SELECT n.nspname AS schema, c.relname AS "table", c.relreplident AS replica_identity
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname = 'public'
  AND (c.relreplident = 'n'
       OR (c.relreplident = 'd'
           AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)));
