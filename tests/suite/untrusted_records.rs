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
