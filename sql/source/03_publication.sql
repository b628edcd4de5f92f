-- The publication totes-cdc reads (option `publication`, default totes_cdc): the totesys
-- business tables, without _prisma_migrations. Run as the tables' owner.

CREATE PUBLICATION totes_cdc FOR TABLE
    public.address, public.counterparty, public.currency, public.department, public.design,
    public.payment, public.payment_type, public.purchase_order, public.sales_order,
    public.staff, public."transaction"
    -- Partitions publish as their root (one mirror per partitioned table).
    WITH (publish_via_partition_root = true);

-- A publication that exists but lacks a table:
--   ALTER PUBLICATION totes_cdc ADD TABLE public.some_table;

-- The replication slot is created by totes-cdc itself on first start, together with the
-- consistent snapshot of the initial copy. To remove everything again:
--   SELECT pg_drop_replication_slot('totes_cdc');
--   DROP PUBLICATION totes_cdc;
