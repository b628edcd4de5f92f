-- fact_purchase_order: one row per captured version of a purchase order; staff_id stays. The
-- rules are those of fact_sales_order (see 20_fact_sales_order.sql).
WITH versions AS MATERIALIZED (
    SELECT b.*, totes_cdc.is_date(b.agreed_delivery_date) AS delivery_ok,
           totes_cdc.is_date(b.agreed_payment_date) AS payment_ok
    -- _redone counts the batch's snapshot rows of the same key 1 to 63 bytes above: a
    -- window over the sorted snapshot rows only, not a self-join (quadratic in the
    -- batch's size); a streaming batch sorts nothing.
    FROM (SELECT *, 0::bigint AS _redone FROM batch_purchase_order WHERE _op <> 'r'
          UNION ALL
          SELECT *, count(*) OVER (
              PARTITION BY purchase_order_id ORDER BY _lsn - '0/0'::pg_lsn
              RANGE BETWEEN 1 FOLLOWING AND 63 FOLLOWING)
          FROM batch_purchase_order WHERE _op = 'r') b
    WHERE b._op IN ('r', 'c', 'u')
      -- A snapshot row copied again by a redo (see 20_fact_sales_order.sql) is no new version.
      AND NOT (b._op = 'r' AND (
          b._redone > 0
          OR EXISTS (SELECT 1 FROM {{schema}}.fact_purchase_order f
                     WHERE f.purchase_order_id = b.purchase_order_id AND f.source_seq < 0
                       AND f.source_lsn <> b._lsn AND abs(f.source_lsn - b._lsn) < 64)))
), dead AS (
    INSERT INTO totes_cdc.dead_letters (source_table, lsn, seq, op, event, reason, kind)
    SELECT 'public.purchase_order', v._lsn, v._seq, v._op,
           to_jsonb(v) - '_lsn' - '_seq' - '_op' - '_unchanged' - '_redone' - 'payment_ok' - 'delivery_ok',
           CASE WHEN NOT v.delivery_ok
                THEN format('agreed_delivery_date %L is not a date (YYYY-MM-DD)', v.agreed_delivery_date)
                ELSE format('agreed_payment_date %L is not a date (YYYY-MM-DD)', v.agreed_payment_date)
           END,
           'invalid_date'
    FROM versions v
    WHERE NOT (v.delivery_ok AND v.payment_ok)
    ON CONFLICT DO NOTHING
), facts AS (
    INSERT INTO {{schema}}.fact_purchase_order
        (purchase_order_id, created_date, created_time, last_updated_date, last_updated_time,
         staff_id, counterparty_id, item_code, item_quantity, item_unit_price, currency_id,
         agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id,
         source_lsn, source_seq, is_current)
    SELECT v.purchase_order_id, v.created_at::date, v.created_at::time, v.last_updated::date,
           v.last_updated::time, v.staff_id, v.counterparty_id, v.item_code, v.item_quantity,
           v.item_unit_price, v.currency_id, v.agreed_delivery_date::date, v.agreed_payment_date::date,
           v.agreed_delivery_location_id, v._lsn, v._seq,
           NOT s._deleted AND s._lsn = v._lsn AND s._seq = v._seq
    FROM versions v
    JOIN staging.purchase_order s ON s.purchase_order_id = v.purchase_order_id
    WHERE v.delivery_ok AND v.payment_ok
    ON CONFLICT (purchase_order_id, source_lsn, source_seq) DO NOTHING
    RETURNING *
), produced AS (
    INSERT INTO produced_fact_purchase_order SELECT * FROM facts
), dates AS (
    INSERT INTO {{schema}}.dim_date (date_id, year, month, day, day_of_week, day_name, month_name, quarter)
    SELECT d, extract(year FROM d)::int, extract(month FROM d)::int, extract(day FROM d)::int,
           extract(isodow FROM d)::int, to_char(d, 'FMDay'), to_char(d, 'FMMonth'),
           extract(quarter FROM d)::int
    FROM (SELECT DISTINCT unnest(ARRAY[created_date, last_updated_date, agreed_delivery_date, agreed_payment_date]) AS d
          FROM facts) dates
    ON CONFLICT (date_id) DO NOTHING
    RETURNING *
)
INSERT INTO produced_dim_date SELECT * FROM dates;

UPDATE {{schema}}.fact_purchase_order f SET is_current = false
FROM staging.purchase_order s
WHERE f.is_current
  AND f.purchase_order_id IN (SELECT purchase_order_id FROM batch_purchase_order WHERE _op <> 't')
  AND s.purchase_order_id = f.purchase_order_id
  AND (s._deleted OR s._lsn <> f.source_lsn OR s._seq <> f.source_seq);

UPDATE {{schema}}.fact_purchase_order f SET is_current = false
FROM staging.purchase_order s
WHERE f.is_current AND s.purchase_order_id = f.purchase_order_id AND s._deleted
  AND EXISTS (SELECT 1 FROM batch_purchase_order WHERE _op = 't');
