-- The totesys star schemas (sales, purchases, payments) sharing dimensions, as the model names
-- them. {{schema}} is the `warehouse-schema` option (default public).
-- Dimensions keep the latest values (upsert by id). Facts keep history: one row per captured
-- version of a source row, with the version's source position (source_lsn, source_seq; unique
-- with the natural key, so a replayed event never adds a second row) and is_current, true only
-- on the latest version of a source row that still exists.

CREATE SCHEMA IF NOT EXISTS {{schema}};

CREATE TABLE IF NOT EXISTS {{schema}}.dim_date (
    date_id date PRIMARY KEY,
    year integer NOT NULL,
    month integer NOT NULL,
    day integer NOT NULL,
    day_of_week integer NOT NULL,
    day_name varchar NOT NULL,
    month_name varchar NOT NULL,
    quarter integer NOT NULL
);

CREATE TABLE IF NOT EXISTS {{schema}}.dim_staff (
    staff_id integer PRIMARY KEY,
    first_name varchar NOT NULL,
    last_name varchar NOT NULL,
    department_name varchar NOT NULL,
    location varchar NOT NULL,
    email_address varchar NOT NULL
);

CREATE TABLE IF NOT EXISTS {{schema}}.dim_location (
    location_id integer PRIMARY KEY,
    address_line_1 varchar NOT NULL,
    address_line_2 varchar,
    district varchar,
    city varchar NOT NULL,
    postal_code varchar NOT NULL,
    country varchar NOT NULL,
    phone varchar NOT NULL
);

CREATE TABLE IF NOT EXISTS {{schema}}.dim_currency (
    currency_id integer PRIMARY KEY,
    currency_code varchar NOT NULL,
    currency_name varchar NOT NULL
);

CREATE TABLE IF NOT EXISTS {{schema}}.dim_design (
    design_id integer PRIMARY KEY,
    design_name varchar NOT NULL,
    file_location varchar NOT NULL,
    file_name varchar NOT NULL
);

CREATE TABLE IF NOT EXISTS {{schema}}.dim_counterparty (
    counterparty_id integer PRIMARY KEY,
    counterparty_legal_name varchar NOT NULL,
    counterparty_legal_address_line_1 varchar NOT NULL,
    counterparty_legal_address_line_2 varchar,
    counterparty_legal_district varchar,
    counterparty_legal_city varchar NOT NULL,
    counterparty_legal_postal_code varchar NOT NULL,
    counterparty_legal_country varchar NOT NULL,
    counterparty_legal_phone_number varchar NOT NULL
);

CREATE TABLE IF NOT EXISTS {{schema}}.dim_transaction (
    transaction_id integer PRIMARY KEY,
    transaction_type varchar NOT NULL,
    sales_order_id integer,
    purchase_order_id integer
);

CREATE TABLE IF NOT EXISTS {{schema}}.dim_payment_type (
    payment_type_id integer PRIMARY KEY,
    payment_type_name varchar NOT NULL
);

CREATE TABLE IF NOT EXISTS {{schema}}.fact_sales_order (
    sales_record_id serial PRIMARY KEY,
    sales_order_id integer NOT NULL,
    created_date date NOT NULL,
    created_time time NOT NULL,
    last_updated_date date NOT NULL,
    last_updated_time time NOT NULL,
    sales_staff_id integer NOT NULL,
    counterparty_id integer NOT NULL,
    units_sold integer NOT NULL,
    unit_price numeric(10,2) NOT NULL,
    currency_id integer NOT NULL,
    design_id integer NOT NULL,
    agreed_payment_date date NOT NULL,
    agreed_delivery_date date NOT NULL,
    agreed_delivery_location_id integer NOT NULL,
    source_lsn pg_lsn NOT NULL,
    source_seq integer NOT NULL,
    is_current boolean NOT NULL,
    UNIQUE (sales_order_id, source_lsn, source_seq)
);

CREATE TABLE IF NOT EXISTS {{schema}}.fact_purchase_order (
    purchase_record_id serial PRIMARY KEY,
    purchase_order_id integer NOT NULL,
    created_date date NOT NULL,
    created_time time NOT NULL,
    last_updated_date date NOT NULL,
    last_updated_time time NOT NULL,
    staff_id integer NOT NULL,
    counterparty_id integer NOT NULL,
    item_code varchar NOT NULL,
    item_quantity integer NOT NULL,
    item_unit_price numeric(10,2) NOT NULL,
    currency_id integer NOT NULL,
    agreed_delivery_date date NOT NULL,
    agreed_payment_date date NOT NULL,
    agreed_delivery_location_id integer NOT NULL,
    source_lsn pg_lsn NOT NULL,
    source_seq integer NOT NULL,
    is_current boolean NOT NULL,
    UNIQUE (purchase_order_id, source_lsn, source_seq)
);

CREATE TABLE IF NOT EXISTS {{schema}}.fact_payment (
    payment_record_id serial PRIMARY KEY,
    payment_id integer NOT NULL,
    created_date date NOT NULL,
    created_time time NOT NULL,
    last_updated_date date NOT NULL,
    last_updated_time time NOT NULL,
    transaction_id integer NOT NULL,
    counterparty_id integer NOT NULL,
    payment_amount numeric(10,2) NOT NULL,
    currency_id integer NOT NULL,
    payment_type_id integer NOT NULL,
    paid boolean NOT NULL,
    payment_date date NOT NULL,
    source_lsn pg_lsn NOT NULL,
    source_seq integer NOT NULL,
    is_current boolean NOT NULL,
    UNIQUE (payment_id, source_lsn, source_seq)
);

-- "The current version of each order" is the everyday query.
CREATE INDEX IF NOT EXISTS fact_sales_order_current ON {{schema}}.fact_sales_order (sales_order_id) WHERE is_current;
CREATE INDEX IF NOT EXISTS fact_purchase_order_current ON {{schema}}.fact_purchase_order (purchase_order_id) WHERE is_current;
CREATE INDEX IF NOT EXISTS fact_payment_current ON {{schema}}.fact_payment (payment_id) WHERE is_current;
