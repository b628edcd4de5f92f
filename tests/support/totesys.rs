//! A small totesys source for tests: the shipped schema, reference rows, and order bundles
//! written the way the real source writes them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

pub const TABLES: [&str; 11] = [
    "address",
    "counterparty",
    "currency",
    "department",
    "design",
    "payment",
    "payment_type",
    "purchase_order",
    "sales_order",
    "staff",
    "transaction",
];

/// Creates the schema and the reference tables' rows.
pub async fn create(client: &Client) {
    client
        .batch_execute(&super::totesys_schema())
        .await
        .expect("totesys schema");
    client
        .batch_execute(
            r#"
INSERT INTO address (address_line_1, address_line_2, district, city, postal_code, country, phone, last_updated)
SELECT g || ' Gutmann Forges', CASE WHEN g % 3 = 0 THEN NULL ELSE 'Suite ' || g END,
       CASE WHEN g % 4 = 0 THEN NULL ELSE 'Avon' END, 'New Patienceburgh', lpad(g::text, 5, '0'),
       'Turkey', '1803 637401', '2022-11-03 14:20:49.962'
FROM generate_series(1, 30) g;
INSERT INTO currency (currency_code, last_updated) VALUES
  ('GBP', '2022-11-03 14:20:49.962'), ('USD', '2022-11-03 14:20:49.962'), ('EUR', '2022-11-03 14:20:49.962');
INSERT INTO department (department_name, location, manager, last_updated) VALUES
  ('Sales', 'Manchester', 'Richard Roma', '2022-11-03 14:20:49.962'),
  ('Purchasing', 'Manchester', 'Naomi Lapaglia', '2022-11-03 14:20:49.962'),
  ('Production', 'Leeds', 'Chester Ryan', '2022-11-03 14:20:49.962'),
  ('Dispatch', 'Leds', 'Mark Hanna', '2022-11-03 14:20:49.962'),
  ('Finance', 'Manchester', 'Jordan Belfort', '2022-11-03 14:20:49.962'),
  ('Facilities', 'Manchester', 'Shelley Levene', '2022-11-03 14:20:49.962'),
  ('Communications', 'Leeds', 'Ann Blake', '2022-11-03 14:20:49.962'),
  ('HR', NULL, 'James Link', '2022-11-03 14:20:49.962');
INSERT INTO staff (first_name, last_name, department_id, email_address, last_updated)
SELECT CASE WHEN g = 7 THEN 'Jeremie' ELSE 'Staff' || g END,
       CASE WHEN g = 7 THEN 'O''Keefe' ELSE 'Surname' || g END,
       1 + g % 8, 'staff' || g || '@terrifictotes.com', '2022-11-03 14:20:51.563'
FROM generate_series(1, 20) g;
INSERT INTO payment_type (payment_type_name, last_updated) VALUES
  ('SALES_RECEIPT', '2022-11-03 14:20:49.962'), ('SALES_REFUND', '2022-11-03 14:20:49.962'),
  ('PURCHASE_PAYMENT', '2022-11-03 14:20:49.962'), ('PURCHASE_REFUND', '2022-11-03 14:20:49.962');
INSERT INTO counterparty (counterparty_legal_name, legal_address_id, commercial_contact, delivery_contact, last_updated)
SELECT 'Fahey and Sons ' || g, 1 + g % 30, 'Micheal Toy', 'Mrs. Lucy Runolfsdottir', '2022-11-03 14:20:51.563'
FROM generate_series(1, 20) g;
INSERT INTO design (design_name, file_location, file_name, last_updated)
SELECT 'Wooden', '/usr', 'wooden-' || g || '.json', '2022-11-03 14:20:49.962'
FROM generate_series(1, 20) g;
"#,
        )
        .await
        .expect("totesys reference rows");
}

/// One sale: order, transaction and payment in one source transaction.
pub async fn sale(client: &Client, n: i32) {
    client.batch_execute(&sale_sql(n)).await.expect("sale");
}

/// One purchase: order, transaction and payment in one source transaction.
pub async fn purchase(client: &Client, n: i32) {
    client
        .batch_execute(&purchase_sql(n))
        .await
        .expect("purchase");
}

/// The SQL of one sale.
pub fn sale_sql(n: i32) -> String {
    format!(
        r#"
BEGIN;
WITH o AS (
  INSERT INTO sales_order (created_at, last_updated, design_id, staff_id, counterparty_id, units_sold, unit_price, currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id)
  VALUES (now()::timestamp(3), now()::timestamp(3), 1 + {n} % 20, 1 + {n} % 20, 1 + {n} % 20, 1000 + {n} * 7 % 99000, 2.00 + ({n} % 200) / 100.0, 1 + {n} % 3, '2025-01-0' || (1 + {n} % 9), '2025-02-0' || (1 + {n} % 9), 1 + {n} % 30)
  RETURNING sales_order_id, created_at, units_sold * unit_price AS amount, counterparty_id, currency_id
), t AS (
  INSERT INTO "transaction" (transaction_type, sales_order_id, created_at, last_updated)
  SELECT 'SALE', sales_order_id, created_at, created_at FROM o RETURNING transaction_id, created_at
)
INSERT INTO payment (created_at, last_updated, transaction_id, counterparty_id, payment_amount, currency_id, payment_type_id, paid, payment_date, company_ac_number, counterparty_ac_number)
SELECT t.created_at, t.created_at, t.transaction_id, o.counterparty_id, o.amount, o.currency_id, 1, false, '2025-02-01', 12345678, 87654321 FROM o, t;
COMMIT;
"#
    )
}

/// The SQL of one purchase.
pub fn purchase_sql(n: i32) -> String {
    format!(
        r#"
BEGIN;
WITH o AS (
  INSERT INTO purchase_order (created_at, last_updated, staff_id, counterparty_id, item_code, item_quantity, item_unit_price, currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id)
  VALUES (now()::timestamp(3), now()::timestamp(3), 1 + {n} % 20, 1 + {n} % 20, 'ZDOI5EA', 1 + {n} % 999, 300.50, 1 + {n} % 3, '2025-03-01', '2025-03-05', 1 + {n} % 30)
  RETURNING purchase_order_id, created_at, item_quantity * item_unit_price AS amount, counterparty_id, currency_id
), t AS (
  INSERT INTO "transaction" (transaction_type, purchase_order_id, created_at, last_updated)
  SELECT 'PURCHASE', purchase_order_id, created_at, created_at FROM o RETURNING transaction_id, created_at
)
INSERT INTO payment (created_at, last_updated, transaction_id, counterparty_id, payment_amount, currency_id, payment_type_id, paid, payment_date, company_ac_number, counterparty_ac_number)
SELECT t.created_at, t.created_at, t.transaction_id, o.counterparty_id, o.amount, o.currency_id, 3, false, '2025-03-05', 12345678, 87654321 FROM o, t;
COMMIT;
"#
    )
}

/// Sales (with a purchase every third) numbered `from..to`, then in one go: mark-paid updates,
/// hand edits of a staff member and a department that do not touch last_updated, and the delete
/// of the oldest order.
pub async fn bundles_and_edits(src: &Client, from: i32, to: i32) {
    for n in from..to {
        sale(src, n).await;
        if n % 3 == 0 {
            purchase(src, n).await;
        }
    }
    src.batch_execute(&format!(
        "UPDATE payment SET paid = true, last_updated = now()::timestamp(3) WHERE payment_id % 4 = 0 AND NOT paid;
         UPDATE staff SET email_address = 'x{from}@terrifictotes.com' WHERE staff_id = 2;
         UPDATE department SET location = 'L{from}' WHERE department_id = 1;
         DELETE FROM sales_order WHERE sales_order_id = (SELECT min(sales_order_id) FROM sales_order);"
    ))
    .await
    .unwrap();
}

/// Creates the publication for the totesys tables.
pub async fn publish(client: &Client) {
    client
        .batch_execute(
            "CREATE PUBLICATION totes_cdc FOR TABLE address, counterparty, currency, department, design, \
             payment, payment_type, purchase_order, sales_order, staff, \"transaction\"",
        )
        .await
        .expect("publication");
}

/// Sales, purchases, mark-paid updates, hand edits and deletes until `stop`, one source
/// transaction every `pace`, surviving connection loss; returns how many were written.
pub fn spawn_workload(
    url: String,
    stop: Arc<AtomicBool>,
    pace: Duration,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut n: i32 = 1000;
        let mut done = 0;
        while !stop.load(Ordering::Relaxed) {
            let Ok((db, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                let sql = match n % 10 {
                    0..=4 => sale_sql(n),
                    5..=6 => purchase_sql(n),
                    7 => "UPDATE payment SET paid = true, last_updated = now()::timestamp(3) \
                          WHERE payment_id IN (SELECT payment_id FROM payment WHERE NOT paid ORDER BY payment_id LIMIT 3)"
                        .to_string(),
                    8 => format!(
                        "UPDATE staff SET email_address = 'e{n}@terrifictotes.com' WHERE staff_id = {};
                         UPDATE department SET manager = 'M{n}', location = CASE WHEN location = 'Leeds' THEN 'Leds' ELSE 'Leeds' END WHERE department_id = {};
                         UPDATE address SET phone = '0161 {n}' WHERE address_id = {}",
                        n % 20 + 1,
                        n % 8 + 1,
                        n % 30 + 1
                    ),
                    _ => "DELETE FROM sales_order WHERE sales_order_id = (SELECT min(sales_order_id) FROM sales_order)"
                        .to_string(),
                };
                if db.batch_execute(&sql).await.is_err() {
                    break;
                }
                n += 1;
                done += 1;
                tokio::time::sleep(pace).await;
            }
        }
        done
    })
}
