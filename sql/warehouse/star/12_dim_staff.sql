-- dim_staff: staff joined to department (name and location from the department; department_id
-- and manager dropped). A department change refreshes all its staff. department.location is
-- nullable in the source but not in the dimension: a missing location is '' (empty string).
-- The rows this batch changed also go to the lake (produced_dim_staff).
WITH changed AS (
    INSERT INTO {{schema}}.dim_staff AS d
        (staff_id, first_name, last_name, department_name, location, email_address)
    SELECT s.staff_id, s.first_name, s.last_name, dep.department_name, coalesce(dep.location, ''),
           s.email_address
    FROM staging.staff s
    JOIN staging.department dep ON dep.department_id = s.department_id AND NOT dep._deleted
    WHERE NOT s._deleted
      AND (s.staff_id IN (SELECT staff_id FROM batch_staff)
           OR s.department_id IN (SELECT department_id FROM batch_department))
    ON CONFLICT (staff_id) DO UPDATE SET
        first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
        department_name = EXCLUDED.department_name, location = EXCLUDED.location,
        email_address = EXCLUDED.email_address
    WHERE (d.first_name, d.last_name, d.department_name, d.location, d.email_address)
        IS DISTINCT FROM (EXCLUDED.first_name, EXCLUDED.last_name, EXCLUDED.department_name,
                          EXCLUDED.location, EXCLUDED.email_address)
    RETURNING *
)
INSERT INTO produced_dim_staff SELECT * FROM changed;
