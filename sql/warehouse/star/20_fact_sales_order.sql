-- fact_sales_order: one row per captured version of a sales order (snapshot read, insert or
-- update); staff_id → sales_staff_id; timestamps split into date and time (milliseconds kept);
-- text dates cast to date. A version is current when it is the row's newest (staging holds
-- the newest position of every row) and the row still exists.
--
-- One pass over the batch: a version whose agreed dates are not dates is a dead letter with its
-- reason (the batch goes on); the others become facts; the dates the new facts reference are
-- added to dim_date.
WITH versions AS MATERIALIZED (
    SELECT b.*, totes_cdc.is_date(b.agreed_payment_date) AS payment_ok,
           totes_cdc.is_date(b.agreed_delivery_date) AS delivery_ok
    -- _redone counts the batch's snapshot rows of the same key 1 to 63 bytes above: a
    -- window over the sorted snapshot rows only, not a self-join (quadratic in the
    -- batch's size); a streaming batch sorts nothing.
    FROM (SELECT *, 0::bigint AS _redone FROM batch_sales_order WHERE _op <> 'r'
          UNION ALL
          SELECT *, count(*) OVER (
              PARTITION BY sales_order_id ORDER BY _lsn - '0/0'::pg_lsn
              RANGE BETWEEN 1 FOLLOWING AND 63 FOLLOWING)
          FROM batch_sales_order WHERE _op = 'r') b
    WHERE b._op IN ('r', 'c', 'u')
      -- A row the snapshot gave already, copied again by a redo after a crash, is no new
      -- version: a redo's rows sit less than 64 bytes below the first copy's positions.
      AND NOT (b._op = 'r' AND (
          b._redone > 0
          OR EXISTS (SELECT 1 FROM {{schema}}.fact_sales_order f
                     WHERE f.sales_order_id = b.sales_order_id AND f.source_seq < 0
                       AND f.source_lsn <> b._lsn AND abs(f.source_lsn - b._lsn) < 64)))
), dead AS (
    INSERT INTO totes_cdc.dead_letters (source_table, lsn, seq, op, event, reason, kind)
    SELECT 'public.sales_order', v._lsn, v._seq, v._op,
           to_jsonb(v) - '_lsn' - '_seq' - '_op' - '_unchanged' - '_redone' - 'payment_ok' - 'delivery_ok',
           CASE WHEN NOT v.payment_ok
                THEN format('agreed_payment_date %L is not a date (YYYY-MM-DD)', v.agreed_payment_date)
                ELSE format('agreed_delivery_date %L is not a date (YYYY-MM-DD)', v.agreed_delivery_date)
           END,
           'invalid_date'
    FROM versions v
    WHERE NOT (v.payment_ok AND v.delivery_ok)
    ON CONFLICT DO NOTHING
), facts AS (
    INSERT INTO {{schema}}.fact_sales_order
        (sales_order_id, created_date, created_time, last_updated_date, last_updated_time,
         sales_staff_id, counterparty_id, units_sold, unit_price, currency_id, design_id,
         agreed_payment_date, agreed_delivery_date, agreed_delivery_location_id,
         source_lsn, source_seq, is_current)
    SELECT v.sales_order_id, v.created_at::date, v.created_at::time, v.last_updated::date,
           v.last_updated::time, v.staff_id, v.counterparty_id, v.units_sold, v.unit_price,
           v.currency_id, v.design_id, v.agreed_payment_date::date, v.agreed_delivery_date::date,
           v.agreed_delivery_location_id, v._lsn, v._seq,
           NOT s._deleted AND s._lsn = v._lsn AND s._seq = v._seq
    FROM versions v
    JOIN staging.sales_order s ON s.sales_order_id = v.sales_order_id
    WHERE v.payment_ok AND v.delivery_ok
    ON CONFLICT (sales_order_id, source_lsn, source_seq) DO NOTHING
    RETURNING *
), produced AS (
    INSERT INTO produced_fact_sales_order SELECT * FROM facts
), dates AS (
    INSERT INTO {{schema}}.dim_date (date_id, year, month, day, day_of_week, day_name, month_name, quarter)
    SELECT d, extract(year FROM d)::int, extract(month FROM d)::int, extract(day FROM d)::int,
           extract(isodow FROM d)::int, to_char(d, 'FMDay'), to_char(d, 'FMMonth'),
           extract(quarter FROM d)::int
    FROM (SELECT DISTINCT unnest(ARRAY[created_date, last_updated_date, agreed_payment_date, agreed_delivery_date]) AS d
          FROM facts) dates
    ON CONFLICT (date_id) DO NOTHING
    RETURNING *
)
INSERT INTO produced_dim_date SELECT * FROM dates;

-- Older versions of the touched orders, and those of deleted or truncated orders, step down.
UPDATE {{schema}}.fact_sales_order f SET is_current = false
FROM staging.sales_order s
WHERE f.is_current
  AND f.sales_order_id IN (SELECT sales_order_id FROM batch_sales_order WHERE _op <> 't')
  AND s.sales_order_id = f.sales_order_id
  AND (s._deleted OR s._lsn <> f.source_lsn OR s._seq <> f.source_seq);

UPDATE {{schema}}.fact_sales_order f SET is_current = false
FROM staging.sales_order s
WHERE f.is_current AND s.sales_order_id = f.sales_order_id AND s._deleted
  AND EXISTS (SELECT 1 FROM batch_sales_order WHERE _op = 't');
