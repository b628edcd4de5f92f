-- dim_location: every address (also those used only as legal addresses), address_id → location_id.
-- The rows this batch changed also go to the lake (produced_dim_location).
WITH changed AS (
    INSERT INTO {{schema}}.dim_location AS d
        (location_id, address_line_1, address_line_2, district, city, postal_code, country, phone)
    SELECT a.address_id, a.address_line_1, a.address_line_2, a.district, a.city, a.postal_code, a.country, a.phone
    FROM staging.address a
    WHERE NOT a._deleted
      AND a.address_id IN (SELECT address_id FROM batch_address)
    ON CONFLICT (location_id) DO UPDATE SET
        address_line_1 = EXCLUDED.address_line_1, address_line_2 = EXCLUDED.address_line_2,
        district = EXCLUDED.district, city = EXCLUDED.city, postal_code = EXCLUDED.postal_code,
        country = EXCLUDED.country, phone = EXCLUDED.phone
    WHERE (d.address_line_1, d.address_line_2, d.district, d.city, d.postal_code, d.country, d.phone)
        IS DISTINCT FROM (EXCLUDED.address_line_1, EXCLUDED.address_line_2, EXCLUDED.district,
                          EXCLUDED.city, EXCLUDED.postal_code, EXCLUDED.country, EXCLUDED.phone)
    RETURNING *
)
INSERT INTO produced_dim_location SELECT * FROM changed;
