-- fact_sales_order: one row per captured version of a sales order (snapshot read, insert or
-- update), staff_id → sales_staff_id, timestamps split into date and time (milliseconds kept),
-- text dates cast to date.

-- A version whose agreed dates are not dates cannot become a fact: it is a dead letter, with
-- the reason, and the batch goes on.
INSERT INTO totes_cdc.dead_letters (source_table, lsn, seq, op, event, reason)
SELECT 'public.sales_order', b._lsn, b._seq, b._op, to_jsonb(b) - '_lsn' - '_seq' - '_op',
       CASE WHEN NOT totes_cdc.is_date(b.agreed_payment_date)
            THEN format('agreed_payment_date %L is not a date (YYYY-MM-DD)', b.agreed_payment_date)
            ELSE format('agreed_delivery_date %L is not a date (YYYY-MM-DD)', b.agreed_delivery_date)
       END
FROM batch_sales_order b
WHERE b._op IN ('r', 'c', 'u')
  AND NOT (totes_cdc.is_date(b.agreed_payment_date) AND totes_cdc.is_date(b.agreed_delivery_date))
ON CONFLICT DO NOTHING;

INSERT INTO {{schema}}.fact_sales_order
    (sales_order_id, created_date, created_time, last_updated_date, last_updated_time,
     sales_staff_id, counterparty_id, units_sold, unit_price, currency_id, design_id,
     agreed_payment_date, agreed_delivery_date, agreed_delivery_location_id,
     source_lsn, source_seq, is_current)
SELECT b.sales_order_id, b.created_at::date, b.created_at::time, b.last_updated::date,
       b.last_updated::time, b.staff_id, b.counterparty_id, b.units_sold, b.unit_price,
       b.currency_id, b.design_id, b.agreed_payment_date::date, b.agreed_delivery_date::date,
       b.agreed_delivery_location_id, b._lsn, b._seq, false
FROM batch_sales_order b
WHERE b._op IN ('r', 'c', 'u')
  AND totes_cdc.is_date(b.agreed_payment_date) AND totes_cdc.is_date(b.agreed_delivery_date)
ON CONFLICT (sales_order_id, source_lsn, source_seq) DO NOTHING;

-- A truncate ends every current version.
UPDATE {{schema}}.fact_sales_order SET is_current = false
WHERE is_current AND EXISTS (SELECT 1 FROM batch_sales_order WHERE _op = 't');

-- The latest version of each touched order is current, unless the order is deleted.
UPDATE {{schema}}.fact_sales_order f SET is_current = v.cur
FROM (
    SELECT f.sales_record_id,
           f.sales_record_id = first_value(f.sales_record_id) OVER w
               AND NOT coalesce(s._deleted, false) AS cur
    FROM {{schema}}.fact_sales_order f
    LEFT JOIN staging.sales_order s ON s.sales_order_id = f.sales_order_id
    WHERE f.sales_order_id IN (SELECT sales_order_id FROM batch_sales_order WHERE _op <> 't')
    WINDOW w AS (PARTITION BY f.sales_order_id ORDER BY f.source_lsn DESC, f.source_seq DESC)
) v
WHERE f.sales_record_id = v.sales_record_id AND f.is_current IS DISTINCT FROM v.cur;
