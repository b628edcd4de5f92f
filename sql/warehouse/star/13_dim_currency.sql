-- dim_currency: the code and its ISO 4217 English name (totes_cdc.iso4217); an unknown code is
-- its own name.
-- The rows this batch changed also go to the lake (produced_dim_currency).
WITH changed AS (
    INSERT INTO {{schema}}.dim_currency AS d (currency_id, currency_code, currency_name)
    SELECT c.currency_id, c.currency_code, coalesce(iso.name, c.currency_code)
    FROM staging.currency c
    LEFT JOIN totes_cdc.iso4217 iso ON iso.code = upper(c.currency_code)
    WHERE NOT c._deleted
      AND c.currency_id IN (SELECT currency_id FROM batch_currency)
    ON CONFLICT (currency_id) DO UPDATE SET
        currency_code = EXCLUDED.currency_code, currency_name = EXCLUDED.currency_name
    WHERE (d.currency_code, d.currency_name) IS DISTINCT FROM (EXCLUDED.currency_code, EXCLUDED.currency_name)
    RETURNING *
)
INSERT INTO produced_dim_currency SELECT * FROM changed;
