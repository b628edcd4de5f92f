//! `totes-cdc generate`: a workload that writes like the real totesys source, only faster.
//! With `--init` it first creates the totesys schema (when missing) and seeds it: the reference
//! tables, designs, and a history of orders with their transaction and payment.
//!
//! Then, at `--rate` transactions per second: new sales (70%) and purchases (30%) — each one
//! source transaction inserting the order, its `transaction` row and its `payment` row with the
//! same created_at — the periodic "mark paid" update, occasional hand edits of staff,
//! departments and addresses (some without touching last_updated, as people do), and the odd
//! deleted order (its transaction's reference is SET NULL).

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::config::GenerateArgs;
use crate::pg::PgUrl;

const SCHEMA_SQL: &str = include_str!("../../sql/source/totesys.sql");

const FIRST: &[&str] = &[
    "Jeremie",
    "Deron",
    "Jeanette",
    "Ana",
    "Magdalena",
    "Korey",
    "Raphael",
    "Oswaldo",
    "Brody",
    "Jazmyn",
    "Meda",
    "Imani",
    "Stan",
    "Rigoberto",
    "Tom",
    "Jett",
    "Irving",
    "Tomasa",
    "Pierre",
    "Flavio",
    "Lucy",
    "Micheal",
    "Sabrina",
    "Nicolas",
];
const LAST: &[&str] = &[
    "Franey",
    "Beier",
    "Erdman",
    "Glover",
    "Zieme",
    "Bergnaum",
    "Rippin",
    "Bashirian",
    "Kuhlman",
    "Kuhn",
    "Cremin",
    "Walker",
    "Lehner",
    "VonRueden",
    "Gutkowski",
    "Parisian",
    "O'Keefe",
    "Moore",
    "Sauer",
    "Kulas",
    "Runolfsdottir",
    "Toy",
    "D'Amore",
    "Hane",
];
const CITIES: &[(&str, &str)] = &[
    ("New Patienceburgh", "Turkey"),
    ("Aliso Viejo", "San Marino"),
    ("Lake Charles", "Samoa"),
    ("Olsonside", "Republic of Korea"),
    ("Fort Shadburgh", "Iceland"),
    ("Kendraburgh", "Zimbabwe"),
    ("North Deshaun", "Faroe Islands"),
    ("Suffolk", "United Kingdom"),
    ("Pricetown", "Bolivia"),
    ("Hackensack", "Iraq"),
];
const DEPARTMENTS: &[(&str, &str)] = &[
    ("Sales", "Manchester"),
    ("Purchasing", "Manchester"),
    ("Production", "Leeds"),
    ("Dispatch", "Leds"),
    ("Finance", "Manchester"),
    ("Facilities", "Manchester"),
    ("Communications", "Leeds"),
    ("HR", "Leeds"),
];
const DISTRICTS: &[&str] = &[
    "Avon",
    "Bedfordshire",
    "Cambridgeshire",
    "Buckinghamshire",
    "Cheshire",
];
const FILE_LOCATIONS: &[&str] = &[
    "/usr",
    "/private",
    "/System",
    "/home/user/dir",
    "/opt/include",
];
const SUFFIXES: &[&str] = &["and Sons", "LLC", "Group", "Inc", "- Schmidt"];
const DESIGNS: &[&str] = &[
    "Wooden", "Steel", "Granite", "Bronze", "Concrete", "Cotton", "Rubber", "Fresh", "Frozen",
    "Plastic", "Soft", "Metal", "Bronze", "Deluxe", "Cotton", "Rustic",
];

/// A small deterministic generator (xorshift64*), so a seed reproduces a workload.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

fn q(s: &str) -> String {
    crate::pg::quote_literal(s)
}

/// The SQL of one order bundle: order, transaction and payment in one source transaction.
/// `at` is an SQL timestamp expression for created_at.
pub fn bundle_sql(rng: &mut Rng, sale: bool, at: &str, designs: i64) -> String {
    let staff = rng.range(1, 20);
    let cp = rng.range(1, 20);
    let currency = rng.range(1, 3);
    let location = rng.range(1, 30);
    let delivery = rng.range(1, 7);
    let payment = rng.range(1, 5);
    let ac1 = rng.range(10_000_000, 99_999_999);
    let ac2 = rng.range(10_000_000, 99_999_999);
    if sale {
        let units = rng.range(1_000, 100_000);
        let price = rng.range(200, 400);
        let design = rng.range(1, designs.max(1));
        format!(
            "WITH t0 AS (SELECT ({at})::timestamp(3) AS at), o AS (
  INSERT INTO sales_order (created_at, last_updated, design_id, staff_id, counterparty_id, units_sold, unit_price, currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id)
  SELECT at, at, {design}, {staff}, {cp}, {units}, {price} / 100.0, {currency}, to_char(at + interval '{delivery} days', 'YYYY-MM-DD'), to_char(at + interval '{payment} days', 'YYYY-MM-DD'), {location} FROM t0
  RETURNING sales_order_id, created_at, units_sold * unit_price AS amount, counterparty_id, currency_id, agreed_payment_date
), t AS (
  INSERT INTO \"transaction\" (transaction_type, sales_order_id, created_at, last_updated)
  SELECT 'SALE', sales_order_id, created_at, created_at FROM o RETURNING transaction_id
)
INSERT INTO payment (created_at, last_updated, transaction_id, counterparty_id, payment_amount, currency_id, payment_type_id, paid, payment_date, company_ac_number, counterparty_ac_number)
SELECT o.created_at, o.created_at, t.transaction_id, o.counterparty_id, o.amount, o.currency_id, 1, false, o.agreed_payment_date, {ac1}, {ac2} FROM o, t;"
        )
    } else {
        let qty = rng.range(1, 999);
        let price = rng.range(100, 100_000);
        let code: String = (0..7)
            .map(|_| {
                let c = rng.range(0, 35) as u8;
                if c < 10 {
                    (b'0' + c) as char
                } else {
                    (b'A' + c - 10) as char
                }
            })
            .collect();
        format!(
            "WITH t0 AS (SELECT ({at})::timestamp(3) AS at), o AS (
  INSERT INTO purchase_order (created_at, last_updated, staff_id, counterparty_id, item_code, item_quantity, item_unit_price, currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id)
  SELECT at, at, {staff}, {cp}, '{code}', {qty}, {price} / 100.0, {currency}, to_char(at + interval '{delivery} days', 'YYYY-MM-DD'), to_char(at + interval '{payment} days', 'YYYY-MM-DD'), {location} FROM t0
  RETURNING purchase_order_id, created_at, item_quantity * item_unit_price AS amount, counterparty_id, currency_id, agreed_payment_date
), t AS (
  INSERT INTO \"transaction\" (transaction_type, purchase_order_id, created_at, last_updated)
  SELECT 'PURCHASE', purchase_order_id, created_at, created_at FROM o RETURNING transaction_id
)
INSERT INTO payment (created_at, last_updated, transaction_id, counterparty_id, payment_amount, currency_id, payment_type_id, paid, payment_date, company_ac_number, counterparty_ac_number)
SELECT o.created_at, o.created_at, t.transaction_id, o.counterparty_id, o.amount, o.currency_id, 3, false, o.agreed_payment_date, {ac1}, {ac2} FROM o, t;"
        )
    }
}

/// Creates the schema and seeds it when the source has no totesys tables yet.
async fn init(client: &Client, url: &PgUrl, rng: &mut Rng, orders: u32) -> Result<bool> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_class WHERE relname = 'sales_order' AND relkind = 'r'",
            &[],
        )
        .await
        .map_err(|e| url.query_error("looking for the totesys tables", e))?
        .is_some();
    if exists {
        return Ok(false);
    }
    let mut sql = String::from(SCHEMA_SQL);
    sql.push_str("\nBEGIN;\n");
    for (i, (city, country)) in (0..30).map(|i| (i, rng.pick(CITIES))).collect::<Vec<_>>() {
        let line2 = if rng.range(0, 2) == 0 {
            "NULL".into()
        } else {
            q(&format!("Apt. {}", rng.range(1, 999)))
        };
        let district = if rng.range(0, 3) == 0 {
            "NULL".into()
        } else {
            q(rng.pick(DISTRICTS))
        };
        sql.push_str(&format!(
            "INSERT INTO address (address_line_1, address_line_2, district, city, postal_code, country, phone, last_updated) \
             VALUES ({}, {line2}, {district}, {}, {}, {}, {}, now());\n",
            q(&format!("{} {} Street", rng.range(1, 9999), rng.pick(LAST))),
            q(city),
            q(&format!("{:05}-{:04}", rng.range(0, 99999), i)),
            q(country),
            q(&format!("{:04} {:06}", rng.range(1000, 9999), rng.range(0, 999_999)))
        ));
    }
    sql.push_str("INSERT INTO currency (currency_code, last_updated) VALUES ('GBP', now()), ('USD', now()), ('EUR', now());\n");
    for (name, location) in DEPARTMENTS {
        sql.push_str(&format!(
            "INSERT INTO department (department_name, location, manager, last_updated) VALUES ({}, {}, {}, now());\n",
            q(name),
            q(location),
            q(&format!("{} {}", rng.pick(FIRST), rng.pick(LAST)))
        ));
    }
    for _ in 0..20 {
        let (f, l) = (rng.pick(FIRST), rng.pick(LAST));
        sql.push_str(&format!(
            "INSERT INTO staff (first_name, last_name, department_id, email_address, last_updated) VALUES ({}, {}, {}, {}, now());\n",
            q(f),
            q(l),
            rng.range(1, 8),
            q(&format!("{}.{}@terrifictotes.com", f.to_lowercase(), l.to_lowercase()))
        ));
    }
    sql.push_str("INSERT INTO payment_type (payment_type_name, last_updated) VALUES ('SALES_RECEIPT', now()), ('SALES_REFUND', now()), ('PURCHASE_PAYMENT', now()), ('PURCHASE_REFUND', now());\n");
    for _ in 0..20 {
        sql.push_str(&format!(
            "INSERT INTO counterparty (counterparty_legal_name, legal_address_id, commercial_contact, delivery_contact, last_updated) \
             VALUES ({}, {}, {}, {}, now());\n",
            q(&format!("{} {} {}", rng.pick(LAST), rng.pick(SUFFIXES), rng.range(1, 99))),
            rng.range(1, 30),
            q(&format!("{} {}", rng.pick(FIRST), rng.pick(LAST))),
            q(&format!("{} {}", rng.pick(FIRST), rng.pick(LAST)))
        ));
    }
    let designs = 100;
    for i in 0..designs {
        let name = rng.pick(DESIGNS).to_string();
        sql.push_str(&format!(
            "INSERT INTO design (design_name, file_location, file_name, last_updated) VALUES ({}, {}, {}, now());\n",
            q(&name),
            q(rng.pick(FILE_LOCATIONS)),
            q(&format!("{}-{i}.json", name.to_lowercase()))
        ));
    }
    // A history of orders over the last 90 days.
    for i in 0..orders {
        let days_ago = 90.0 * (orders - i) as f64 / orders.max(1) as f64;
        let at = format!("now() - interval '{days_ago:.4} days'");
        let sale = rng.range(0, 9) < 7;
        sql.push_str(&bundle_sql(rng, sale, &at, designs));
        sql.push('\n');
    }
    sql.push_str("COMMIT;\n");
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| url.query_error("creating and seeding the totesys schema", e))?;
    Ok(true)
}

pub async fn run(args: GenerateArgs, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let url = super::source_url(&args.source, "generate")?;
    let client = url.connect().await?;
    let mut rng = Rng::new(args.seed);
    if args.init {
        if init(&client, &url, &mut rng, args.initial_orders).await? {
            println!(
                "created the totesys schema in {} and seeded it ({} orders)",
                url.masked(),
                args.initial_orders
            );
        } else {
            println!("{} already holds the totesys tables", url.masked());
        }
        if args.rate == 0.0 {
            return Ok(());
        }
    }
    if args.rate <= 0.0 {
        return Ok(());
    }
    let designs: i64 = client
        .query_one("SELECT count(*) FROM design", &[])
        .await
        .context("counting designs (run generate --init first)")?
        .get(0);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        n += 1;
        let roll = rng.range(0, 999);
        let sql = if n % (args.rate.max(1.0) as u64 * 10) == 0 {
            // The "mark paid" job: payments due by today (here: a few days ahead) are paid.
            "UPDATE payment SET paid = true, last_updated = now() \
             WHERE NOT paid AND payment_date <= to_char(now() + interval '3 days', 'YYYY-MM-DD')"
                .to_string()
        } else if roll < 12 {
            // Hand edits; people do not always bump last_updated.
            match rng.range(0, 3) {
                0 => format!(
                    "UPDATE staff SET email_address = {} WHERE staff_id = {}",
                    q(&format!("{}{}@terrifictotes.com", rng.pick(FIRST).to_lowercase(), rng.range(1, 99))),
                    rng.range(1, 20)
                ),
                1 => format!(
                    "UPDATE department SET manager = {}, last_updated = now() WHERE department_id = {}",
                    q(&format!("{} {}", rng.pick(FIRST), rng.pick(LAST))),
                    rng.range(1, 8)
                ),
                2 => format!(
                    "UPDATE address SET phone = {} WHERE address_id = {}",
                    q(&format!("{:04} {:06}", rng.range(1000, 9999), rng.range(0, 999_999))),
                    rng.range(1, 30)
                ),
                _ => format!(
                    "UPDATE sales_order SET units_sold = units_sold + {} WHERE sales_order_id = (SELECT max(sales_order_id) - {} FROM sales_order)",
                    rng.range(1, 50),
                    rng.range(0, 20)
                ),
            }
        } else if roll < 16 {
            // A cancelled sale: its transaction's reference is set NULL by the source.
            "DELETE FROM sales_order WHERE sales_order_id = (SELECT max(sales_order_id) - 5 FROM sales_order)".to_string()
        } else {
            format!(
                "BEGIN; {} COMMIT;",
                bundle_sql(&mut rng, roll < 700, "now()", designs)
            )
        };
        if let Err(e) = client.batch_execute(&sql).await {
            if client.is_closed() {
                return Err(url.query_error("writing the workload", e).into());
            }
            tracing::warn!("a generated write failed: {e}");
        }
    }
    Ok(())
}
