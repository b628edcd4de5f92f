-- dim_design: the design's name and file.
-- The rows this batch changed also go to the lake (produced_dim_design).
WITH changed AS (
    INSERT INTO {{schema}}.dim_design AS d (design_id, design_name, file_location, file_name)
    SELECT s.design_id, s.design_name, s.file_location, s.file_name
    FROM staging.design s
    WHERE NOT s._deleted
      AND s.design_id IN (SELECT design_id FROM batch_design)
    ON CONFLICT (design_id) DO UPDATE SET
        design_name = EXCLUDED.design_name, file_location = EXCLUDED.file_location,
        file_name = EXCLUDED.file_name
    WHERE (d.design_name, d.file_location, d.file_name)
        IS DISTINCT FROM (EXCLUDED.design_name, EXCLUDED.file_location, EXCLUDED.file_name)
    RETURNING *
)
INSERT INTO produced_dim_design SELECT * FROM changed;
