-- dim_transaction: type as plain text, and the order it belongs to (NULL once that order is
-- deleted: the source sets it NULL).
-- The rows this batch changed also go to the lake (produced_dim_transaction).
WITH changed AS (
    INSERT INTO {{schema}}.dim_transaction AS d (transaction_id, transaction_type, sales_order_id, purchase_order_id)
    SELECT s.transaction_id, s.transaction_type::text, s.sales_order_id, s.purchase_order_id
    FROM staging."transaction" s
    WHERE NOT s._deleted
      AND s.transaction_id IN (SELECT transaction_id FROM "batch_transaction")
    ON CONFLICT (transaction_id) DO UPDATE SET
        transaction_type = EXCLUDED.transaction_type, sales_order_id = EXCLUDED.sales_order_id,
        purchase_order_id = EXCLUDED.purchase_order_id
    WHERE (d.transaction_type, d.sales_order_id, d.purchase_order_id)
        IS DISTINCT FROM (EXCLUDED.transaction_type, EXCLUDED.sales_order_id, EXCLUDED.purchase_order_id)
    RETURNING *
)
INSERT INTO produced_dim_transaction SELECT * FROM changed;
