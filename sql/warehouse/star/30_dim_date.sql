-- dim_date: every date a fact of this batch references, added when missing. day_of_week is ISO
-- (1 = Monday … 7 = Sunday); names are full English names without padding.
INSERT INTO {{schema}}.dim_date
    (date_id, year, month, day, day_of_week, day_name, month_name, quarter)
SELECT d, extract(year FROM d)::int, extract(month FROM d)::int, extract(day FROM d)::int,
       extract(isodow FROM d)::int, to_char(d, 'FMDay'), to_char(d, 'FMMonth'),
       extract(quarter FROM d)::int
FROM (
    SELECT unnest(ARRAY[f.created_date, f.last_updated_date, f.agreed_payment_date, f.agreed_delivery_date]) AS d
    FROM {{schema}}.fact_sales_order f
    JOIN batch_sales_order b ON b.sales_order_id = f.sales_order_id AND b._lsn = f.source_lsn AND b._seq = f.source_seq
    UNION
    SELECT unnest(ARRAY[f.created_date, f.last_updated_date, f.agreed_delivery_date, f.agreed_payment_date])
    FROM {{schema}}.fact_purchase_order f
    JOIN batch_purchase_order b ON b.purchase_order_id = f.purchase_order_id AND b._lsn = f.source_lsn AND b._seq = f.source_seq
    UNION
    SELECT unnest(ARRAY[f.created_date, f.last_updated_date, f.payment_date])
    FROM {{schema}}.fact_payment f
    JOIN batch_payment b ON b.payment_id = f.payment_id AND b._lsn = f.source_lsn AND b._seq = f.source_seq
) dates
WHERE d IS NOT NULL
ON CONFLICT (date_id) DO NOTHING;
