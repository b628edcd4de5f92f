-- dim_counterparty: counterparty joined to its legal address; contacts and legal_address_id
-- dropped. An address change refreshes every counterparty that uses it.
-- The rows this batch changed also go to the lake (produced_dim_counterparty).
WITH changed AS (
    INSERT INTO {{schema}}.dim_counterparty AS d
        (counterparty_id, counterparty_legal_name, counterparty_legal_address_line_1,
         counterparty_legal_address_line_2, counterparty_legal_district, counterparty_legal_city,
         counterparty_legal_postal_code, counterparty_legal_country, counterparty_legal_phone_number)
    SELECT c.counterparty_id, c.counterparty_legal_name, a.address_line_1, a.address_line_2,
           a.district, a.city, a.postal_code, a.country, a.phone
    FROM staging.counterparty c
    JOIN staging.address a ON a.address_id = c.legal_address_id AND NOT a._deleted
    WHERE NOT c._deleted
      AND (c.counterparty_id IN (SELECT counterparty_id FROM batch_counterparty)
           OR c.legal_address_id IN (SELECT address_id FROM batch_address))
    ON CONFLICT (counterparty_id) DO UPDATE SET
        counterparty_legal_name = EXCLUDED.counterparty_legal_name,
        counterparty_legal_address_line_1 = EXCLUDED.counterparty_legal_address_line_1,
        counterparty_legal_address_line_2 = EXCLUDED.counterparty_legal_address_line_2,
        counterparty_legal_district = EXCLUDED.counterparty_legal_district,
        counterparty_legal_city = EXCLUDED.counterparty_legal_city,
        counterparty_legal_postal_code = EXCLUDED.counterparty_legal_postal_code,
        counterparty_legal_country = EXCLUDED.counterparty_legal_country,
        counterparty_legal_phone_number = EXCLUDED.counterparty_legal_phone_number
    WHERE (d.counterparty_legal_name, d.counterparty_legal_address_line_1, d.counterparty_legal_address_line_2,
           d.counterparty_legal_district, d.counterparty_legal_city, d.counterparty_legal_postal_code,
           d.counterparty_legal_country, d.counterparty_legal_phone_number)
        IS DISTINCT FROM (EXCLUDED.counterparty_legal_name, EXCLUDED.counterparty_legal_address_line_1,
           EXCLUDED.counterparty_legal_address_line_2, EXCLUDED.counterparty_legal_district,
           EXCLUDED.counterparty_legal_city, EXCLUDED.counterparty_legal_postal_code,
           EXCLUDED.counterparty_legal_country, EXCLUDED.counterparty_legal_phone_number)
    RETURNING *
)
INSERT INTO produced_dim_counterparty SELECT * FROM changed;
