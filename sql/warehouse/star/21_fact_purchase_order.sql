-- fact_purchase_order: one row per captured version of a purchase order; staff_id stays.

INSERT INTO totes_cdc.dead_letters (source_table, lsn, seq, op, event, reason)
SELECT 'public.purchase_order', b._lsn, b._seq, b._op, to_jsonb(b) - '_lsn' - '_seq' - '_op',
       CASE WHEN NOT totes_cdc.is_date(b.agreed_delivery_date)
            THEN format('agreed_delivery_date %L is not a date (YYYY-MM-DD)', b.agreed_delivery_date)
            ELSE format('agreed_payment_date %L is not a date (YYYY-MM-DD)', b.agreed_payment_date)
       END
FROM batch_purchase_order b
WHERE b._op IN ('r', 'c', 'u')
  AND NOT (totes_cdc.is_date(b.agreed_delivery_date) AND totes_cdc.is_date(b.agreed_payment_date))
ON CONFLICT DO NOTHING;

INSERT INTO {{schema}}.fact_purchase_order
    (purchase_order_id, created_date, created_time, last_updated_date, last_updated_time,
     staff_id, counterparty_id, item_code, item_quantity, item_unit_price, currency_id,
     agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id,
     source_lsn, source_seq, is_current)
SELECT b.purchase_order_id, b.created_at::date, b.created_at::time, b.last_updated::date,
       b.last_updated::time, b.staff_id, b.counterparty_id, b.item_code, b.item_quantity,
       b.item_unit_price, b.currency_id, b.agreed_delivery_date::date, b.agreed_payment_date::date,
       b.agreed_delivery_location_id, b._lsn, b._seq, false
FROM batch_purchase_order b
WHERE b._op IN ('r', 'c', 'u')
  AND totes_cdc.is_date(b.agreed_delivery_date) AND totes_cdc.is_date(b.agreed_payment_date)
ON CONFLICT (purchase_order_id, source_lsn, source_seq) DO NOTHING;

UPDATE {{schema}}.fact_purchase_order SET is_current = false
WHERE is_current AND EXISTS (SELECT 1 FROM batch_purchase_order WHERE _op = 't');

UPDATE {{schema}}.fact_purchase_order f SET is_current = v.cur
FROM (
    SELECT f.purchase_record_id,
           f.purchase_record_id = first_value(f.purchase_record_id) OVER w
               AND NOT coalesce(s._deleted, false) AS cur
    FROM {{schema}}.fact_purchase_order f
    LEFT JOIN staging.purchase_order s ON s.purchase_order_id = f.purchase_order_id
    WHERE f.purchase_order_id IN (SELECT purchase_order_id FROM batch_purchase_order WHERE _op <> 't')
    WINDOW w AS (PARTITION BY f.purchase_order_id ORDER BY f.source_lsn DESC, f.source_seq DESC)
) v
WHERE f.purchase_record_id = v.purchase_record_id AND f.is_current IS DISTINCT FROM v.cur;
