-- fact_payment: one row per captured version of a payment; company_ac_number and
-- counterparty_ac_number dropped. The rules are those of fact_sales_order
-- (see 20_fact_sales_order.sql).
WITH versions AS MATERIALIZED (
    SELECT b.*, totes_cdc.is_date(b.payment_date) AS date_ok
    -- _redone counts the batch's snapshot rows of the same key 1 to 63 bytes above: a
    -- window over the sorted snapshot rows only, not a self-join (quadratic in the
    -- batch's size); a streaming batch sorts nothing.
    FROM (SELECT *, 0::bigint AS _redone FROM batch_payment WHERE _op <> 'r'
          UNION ALL
          SELECT *, count(*) OVER (
              PARTITION BY payment_id ORDER BY _lsn - '0/0'::pg_lsn
              RANGE BETWEEN 1 FOLLOWING AND 63 FOLLOWING)
          FROM batch_payment WHERE _op = 'r') b
    WHERE b._op IN ('r', 'c', 'u')
      -- A snapshot row copied again by a redo (see 20_fact_sales_order.sql) is no new version.
      AND NOT (b._op = 'r' AND (
          b._redone > 0
          OR EXISTS (SELECT 1 FROM {{schema}}.fact_payment f
                     WHERE f.payment_id = b.payment_id AND f.source_seq < 0
                       AND f.source_lsn <> b._lsn AND abs(f.source_lsn - b._lsn) < 64)))
), dead AS (
    INSERT INTO totes_cdc.dead_letters (source_table, lsn, seq, op, event, reason, kind)
    SELECT 'public.payment', v._lsn, v._seq, v._op,
           to_jsonb(v) - '_lsn' - '_seq' - '_op' - '_unchanged' - '_redone' - 'date_ok',
           format('payment_date %L is not a date (YYYY-MM-DD)', v.payment_date),
           'invalid_date'
    FROM versions v
    WHERE NOT v.date_ok
    ON CONFLICT DO NOTHING
), facts AS (
    INSERT INTO {{schema}}.fact_payment
        (payment_id, created_date, created_time, last_updated_date, last_updated_time,
         transaction_id, counterparty_id, payment_amount, currency_id, payment_type_id, paid,
         payment_date, source_lsn, source_seq, is_current)
    SELECT v.payment_id, v.created_at::date, v.created_at::time, v.last_updated::date,
           v.last_updated::time, v.transaction_id, v.counterparty_id, v.payment_amount,
           v.currency_id, v.payment_type_id, v.paid, v.payment_date::date, v._lsn, v._seq,
           NOT s._deleted AND s._lsn = v._lsn AND s._seq = v._seq
    FROM versions v
    JOIN staging.payment s ON s.payment_id = v.payment_id
    WHERE v.date_ok
    ON CONFLICT (payment_id, source_lsn, source_seq) DO NOTHING
    RETURNING *
), produced AS (
    INSERT INTO produced_fact_payment SELECT * FROM facts
), dates AS (
    INSERT INTO {{schema}}.dim_date (date_id, year, month, day, day_of_week, day_name, month_name, quarter)
    SELECT d, extract(year FROM d)::int, extract(month FROM d)::int, extract(day FROM d)::int,
           extract(isodow FROM d)::int, to_char(d, 'FMDay'), to_char(d, 'FMMonth'),
           extract(quarter FROM d)::int
    FROM (SELECT DISTINCT unnest(ARRAY[created_date, last_updated_date, payment_date]) AS d FROM facts) dates
    ON CONFLICT (date_id) DO NOTHING
    RETURNING *
)
INSERT INTO produced_dim_date SELECT * FROM dates;

UPDATE {{schema}}.fact_payment f SET is_current = false
FROM staging.payment s
WHERE f.is_current
  AND f.payment_id IN (SELECT payment_id FROM batch_payment WHERE _op <> 't')
  AND s.payment_id = f.payment_id
  AND (s._deleted OR s._lsn <> f.source_lsn OR s._seq <> f.source_seq);

UPDATE {{schema}}.fact_payment f SET is_current = false
FROM staging.payment s
WHERE f.is_current AND s.payment_id = f.payment_id AND s._deleted
  AND EXISTS (SELECT 1 FROM batch_payment WHERE _op = 't');
