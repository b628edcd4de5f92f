//! `make run` keeps working: the script behind it (scripts/run-local.sh) with the test-built
//! binary brings up the throwaway cluster, seeds the source, runs the pipeline with the
//! generator, and on Ctrl-C prints its summary and stops everything.

use crate::support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn make_run_brings_up_the_pipeline_and_warehouse_rows_appear() {
    let data = support::temp_dir("makerun");
    let port = support::pg::free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/run-local.sh");
    let bin = support::bin();
    let mut child = Command::new("bash")
        .arg(script)
        .env("TOTES_CDC_BIN", &bin)
        .env("TOTES_CDC_DATA", &data)
        .env("TOTES_CDC_PORT", port.to_string())
        .env("TOTES_CDC_RATE", "50")
        .env("TOTES_CDC_METRICS_ADDR", "127.0.0.1:0")
        .env("TOTES_CDC_PG_BIN", support::pg::pg_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run-local.sh");
    let pgid = child.id();

    // Sales made by the generator after the start reach the warehouse.
    let url = format!("postgres://postgres@127.0.0.1:{port}/warehouse");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut first: Option<i64> = None;
    loop {
        if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            if let Ok(r) = c
                .query_one("SELECT count(*) FROM fact_sales_order", &[])
                .await
            {
                let n: i64 = r.get(0);
                match first {
                    None if n > 0 => first = Some(n),
                    Some(f) if n > f => break,
                    _ => {}
                }
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "make run ended early ({status}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "no warehouse rows appeared");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Ctrl-C reaches the whole process group, as from a terminal.
    Command::new("kill")
        .args(["-s", "INT", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(
        stderr.contains("summary:") && stderr.contains("events/s"),
        "{stderr}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the throwaway cluster was stopped"
    );
    let _ = std::fs::remove_dir_all(&data);
}
