-- fact_payment: one row per captured version of a payment; company_ac_number and
-- counterparty_ac_number dropped.

INSERT INTO totes_cdc.dead_letters (source_table, lsn, seq, op, event, reason)
SELECT 'public.payment', b._lsn, b._seq, b._op, to_jsonb(b) - '_lsn' - '_seq' - '_op',
       format('payment_date %L is not a date (YYYY-MM-DD)', b.payment_date)
FROM batch_payment b
WHERE b._op IN ('r', 'c', 'u') AND NOT totes_cdc.is_date(b.payment_date)
ON CONFLICT DO NOTHING;

INSERT INTO {{schema}}.fact_payment
    (payment_id, created_date, created_time, last_updated_date, last_updated_time,
     transaction_id, counterparty_id, payment_amount, currency_id, payment_type_id, paid,
     payment_date, source_lsn, source_seq, is_current)
SELECT b.payment_id, b.created_at::date, b.created_at::time, b.last_updated::date,
       b.last_updated::time, b.transaction_id, b.counterparty_id, b.payment_amount,
       b.currency_id, b.payment_type_id, b.paid, b.payment_date::date, b._lsn, b._seq, false
FROM batch_payment b
WHERE b._op IN ('r', 'c', 'u') AND totes_cdc.is_date(b.payment_date)
ON CONFLICT (payment_id, source_lsn, source_seq) DO NOTHING;

UPDATE {{schema}}.fact_payment SET is_current = false
WHERE is_current AND EXISTS (SELECT 1 FROM batch_payment WHERE _op = 't');

UPDATE {{schema}}.fact_payment f SET is_current = v.cur
FROM (
    SELECT f.payment_record_id,
           f.payment_record_id = first_value(f.payment_record_id) OVER w
               AND NOT coalesce(s._deleted, false) AS cur
    FROM {{schema}}.fact_payment f
    LEFT JOIN staging.payment s ON s.payment_id = f.payment_id
    WHERE f.payment_id IN (SELECT payment_id FROM batch_payment WHERE _op <> 't')
    WINDOW w AS (PARTITION BY f.payment_id ORDER BY f.source_lsn DESC, f.source_seq DESC)
) v
WHERE f.payment_record_id = v.payment_record_id AND f.is_current IS DISTINCT FROM v.cur;
