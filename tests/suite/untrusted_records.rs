//! Kinesis records are untrusted input: an oversized record's pointer is followed only into the
//! lake's `oversized/` prefix and read up to a cap. A pointer to a missing object, a path outside
//! the lake (directly, through `..` or through a symbolic link), `/dev/zero`, or an object over
//! the cap makes its record a dead letter with the reason; the shard goes on and a good pointer
//! lands.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::moto::Moto;
use support::{consume_args, totesys, PgCluster, Proc};

const WAIT: Duration = Duration::from_secs(120);

/// A currency insert's envelope; with `oversized`, a pointer record without the row.
fn envelope(id: i64, oversized: Option<&str>) -> Value {
    let after = json!({
        "currency_id": id,
        "currency_code": "JPY",
        "created_at": "2026-12-03T12:00:00",
        "last_updated": "2026-12-03T12:00:00",
    });
    json!({
        "version": 1,
        "op": "c",
        "source": {
            "database": "src",
            "schema": "public",
            "table": "currency",
            "lsn": format!("0/{:X}", 0x1000 + id),
            "seq": 0,
            "xid": 1,
            "commit_ts": "2026-12-03T12:00:00Z",
        },
        "key": {"currency_id": id},
        "before": null,
        "after": if oversized.is_some() { Value::Null } else { after },
        "oversized": oversized,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn pointers_outside_the_lake_or_over_the_cap_become_dead_letters() {
    let moto = Moto::start();
    moto.create_stream("ptr", 1).await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    support::setup(&src_url, &wh_url, &[]);

    let dir = support::temp_dir("ptr");
    let lake = dir.join("lake");
    let objects = lake.join("oversized/public.currency");
    std::fs::create_dir_all(&objects).unwrap();
    let good = envelope(7, None);
    std::fs::write(objects.join("ok.json"), good.to_string()).unwrap();
    let mut big = envelope(8, None);
    big["after"]["currency_code"] = Value::String("X".repeat(2000));
    std::fs::write(objects.join("big.json"), big.to_string()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", objects.join("zero.json")).unwrap();
    let at = |name: &str| format!("{}/{name}", lake.display());

    let pointers = [
        (7, at("oversized/public.currency/ok.json")),
        (9, at("oversized/public.currency/missing.json")),
        (10, "/etc/passwd".to_string()),
        (11, "/dev/zero".to_string()),
        (12, at("oversized/../../../../../../etc/passwd")),
        (13, at("oversized/public.currency/zero.json")),
        (8, at("oversized/public.currency/big.json")),
    ];
    let kinesis = moto.kinesis().await;
    for (id, location) in &pointers {
        kinesis
            .put_record()
            .stream_name("ptr")
            .partition_key(id.to_string())
            .data(aws_sdk_kinesis::primitives::Blob::new(
                envelope(*id, Some(location)).to_string().into_bytes(),
            ))
            .send()
            .await
            .unwrap();
    }

    let lake_arg = lake.to_string_lossy().into_owned();
    let mut args = consume_args("ptr", &wh_url, &lake_arg);
    args.extend(["--oversized-max-bytes", "1KiB"]);
    let consumer = Proc::spawn(&args, &moto.env());
    let deadline = Instant::now() + WAIT;
    let reasons: Vec<String> = loop {
        let rows = wh
            .query(
                "SELECT reason FROM totes_cdc.dead_letters WHERE kind = 'unparseable_record' ORDER BY origin",
                &[],
            )
            .await
            .unwrap();
        let landed = wh
            .query(
                "SELECT 1 FROM staging.currency WHERE currency_id = 7 AND currency_code = 'JPY'",
                &[],
            )
            .await
            .unwrap();
        if rows.len() == 6 && landed.len() == 1 {
            break rows.iter().map(|r| r.get(0)).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} dead letters, good pointer landed: {}; consumer:\n{}",
            rows.len(),
            landed.len(),
            consumer.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let outside = reasons
        .iter()
        .filter(|r| r.contains("is not inside the lake's oversized/ prefix"))
        .count();
    assert_eq!(outside, 5, "{reasons:#?}");
    assert!(
        reasons.iter().any(|r| r.contains("over the 1024-byte cap")),
        "{reasons:#?}"
    );
}

/// Aggregated (KPL) records are untrusted too: a user record that is no envelope is a dead
/// letter named by its sub-sequence number while its neighbours land; a record whose magic and
/// digest match but whose message does not decode is one dead letter; bytes that only start
/// with the magic are a plain (unparseable) record.
#[tokio::test(flavor = "multi_thread")]
async fn broken_aggregated_records_become_dead_letters_and_their_neighbours_land() {
    use totes_cdc::transport::kinesis::aggregate::{Aggregator, MAGIC};
    let moto = Moto::start();
    moto.create_stream("agg", 1).await;
    let pg = PgCluster::start();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    let (src_url, wh_url) = (pg.url("src"), pg.url("wh"));
    support::setup(&src_url, &wh_url, &[]);

    let mut mixed = Aggregator::default();
    mixed.push("20", envelope(20, None).to_string().as_bytes());
    mixed.push("junk", b"not an envelope");
    mixed.push("21", envelope(21, None).to_string().as_bytes());
    // Magic and a digest that matches, and a message cut in the middle of a field.
    let mut sealed = MAGIC.to_vec();
    let message = [3u8 << 3 | 2, 40, 1 << 3];
    sealed.extend_from_slice(&message);
    sealed.extend_from_slice(&md5_of(&message));
    // Only the magic: a plain record of bytes.
    let mut impostor = MAGIC.to_vec();
    impostor.extend_from_slice(&[0u8; 40]);
    let kinesis = moto.kinesis().await;
    for data in [mixed.finish(), sealed, impostor] {
        kinesis
            .put_record()
            .stream_name("agg")
            .partition_key("k")
            .data(aws_sdk_kinesis::primitives::Blob::new(data))
            .send()
            .await
            .unwrap();
    }
    let dir = support::temp_dir("aggbad");
    let lake = dir.join("lake").to_string_lossy().into_owned();
    let consumer = Proc::spawn(&consume_args("agg", &wh_url, &lake), &moto.env());
    let deadline = Instant::now() + WAIT;
    loop {
        let dead: Vec<(String, String)> = wh
            .query(
                "SELECT origin, reason FROM totes_cdc.dead_letters ORDER BY origin",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let landed: i64 = wh
            .query_one(
                "SELECT count(*) FROM staging.currency WHERE currency_id IN (20, 21)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if dead.len() == 3 && landed == 2 {
            assert!(
                dead.iter()
                    .any(|(o, r)| o.ends_with("/1") && r.contains("not a totes-cdc envelope")),
                "{dead:#?}"
            );
            assert!(
                dead.iter().any(|(_, r)| r.contains("does not decode")),
                "{dead:#?}"
            );
            assert!(
                dead.iter()
                    .filter(|(_, r)| r.contains("not a totes-cdc envelope"))
                    .count()
                    == 2,
                "{dead:#?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{dead:#?}, {landed} landed; consumer:\n{}",
            consumer.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn md5_of(b: &[u8]) -> [u8; 16] {
    // The digest the format seals with; the test computes it with Python's hashlib, an
    // implementation independent of the producer's.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; sys.stdout.write(hashlib.md5(bytes.fromhex(sys.argv[1])).hexdigest())",
            &b.iter().map(|x| format!("{x:02x}")).collect::<String>(),
        ])
        .output()
        .expect("python3");
    let hex = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut d = [0u8; 16];
    for (i, byte) in d.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    d
}
