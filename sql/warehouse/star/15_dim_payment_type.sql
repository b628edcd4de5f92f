-- dim_payment_type: the enum value as plain text, same spelling.
-- The rows this batch changed also go to the lake (produced_dim_payment_type).
WITH changed AS (
    INSERT INTO {{schema}}.dim_payment_type AS d (payment_type_id, payment_type_name)
    SELECT s.payment_type_id, s.payment_type_name::text
    FROM staging.payment_type s
    WHERE NOT s._deleted
      AND s.payment_type_id IN (SELECT payment_type_id FROM batch_payment_type)
    ON CONFLICT (payment_type_id) DO UPDATE SET payment_type_name = EXCLUDED.payment_type_name
    WHERE d.payment_type_name IS DISTINCT FROM EXCLUDED.payment_type_name
    RETURNING *
)
INSERT INTO produced_dim_payment_type SELECT * FROM changed;
