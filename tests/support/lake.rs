//! The lake as a reader that globs its directory sees it.

use std::collections::BTreeSet;

use serde_json::Value;
use tokio_postgres::Client;

/// What DuckDB finds globbing a lake directory.
pub struct Globbed {
    /// Every `*.parquet` file, relative to the lake.
    pub files: BTreeSet<String>,
    /// The position (table, lsn, seq) of every row of the changes files.
    pub positions: Vec<(String, u64, i32)>,
}

pub fn glob(lake: &str) -> Globbed {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/lake_positions.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(lake)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "DuckDB could not read the lake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("reader output");
    Globbed {
        files: v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect(),
        positions: v["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().parse().unwrap(),
                    p[2].as_i64().unwrap() as i32,
                )
            })
            .collect(),
    }
}

/// The paths of `totes_cdc.lake_files`.
pub async fn manifest_paths(wh: &Client) -> BTreeSet<String> {
    wh.query("SELECT path FROM totes_cdc.lake_files", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The lake's promise: a glob over the directory finds exactly the committed files (the
/// manifest), each change position stands in exactly one of them, and nothing is left staged.
/// Returns the streamed positions (table, lsn, seq) the changes files hold.
pub async fn assert_each_change_once(wh: &Client, lake: &str) -> BTreeSet<(String, u64, i32)> {
    wait_settled(wh).await;
    let seen = glob(lake);
    let listed = manifest_paths(wh).await;
    let unlisted: Vec<_> = seen.files.difference(&listed).take(5).collect();
    let missing: Vec<_> = listed.difference(&seen.files).take(5).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "a glob over the lake sees files outside the manifest {unlisted:?}, or misses committed ones {missing:?}"
    );
    let mut once = BTreeSet::new();
    let twice: Vec<_> = seen
        .positions
        .iter()
        .filter(|p| !once.insert((*p).clone()))
        .take(5)
        .collect();
    assert!(
        twice.is_empty(),
        "change positions in two committed files (of {}): {twice:?}",
        seen.positions.len()
    );
    once.into_iter().filter(|p| p.2 >= 0).collect()
}

/// The positions (`schema.table`, lsn, seq) of the changes an independent capture
/// (`stream --sink stdout`) saw.
pub fn oracle_positions(events: &[Value]) -> BTreeSet<(String, u64, i32)> {
    events
        .iter()
        .filter(|e| matches!(e["op"].as_str(), Some("c" | "u" | "d")))
        .filter_map(|e| {
            let (hi, lo) = e["source"]["lsn"].as_str()?.split_once('/')?;
            let lsn =
                (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
            Some((
                format!(
                    "{}.{}",
                    e["source"]["schema"].as_str()?,
                    e["source"]["table"].as_str()?
                ),
                lsn,
                e["source"]["seq"].as_i64()? as i32,
            ))
        })
        .collect()
}

/// Waits until no staged file is left: a batch's files are published just after its commit,
/// so a warehouse that caught up may still have its last batch's files on their way.
pub async fn wait_settled(wh: &Client) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let staged: i64 = wh
            .query_one("SELECT count(*) FROM totes_cdc.lake_staged", &[])
            .await
            .unwrap()
            .get(0);
        if staged == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{staged} staged lake files were never published or removed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The lake's promise against an independent capture (`stream --sink stdout`): each change it
/// saw stands in exactly one committed file, nothing else does, and a glob sees nothing more.
pub async fn assert_holds_what_the_oracle_saw(wh: &Client, lake: &str, oracle: &[Value]) {
    let in_lake = assert_each_change_once(wh, lake).await;
    super::assert_same_sets("the lake's changes", &oracle_positions(oracle), &in_lake);
}
