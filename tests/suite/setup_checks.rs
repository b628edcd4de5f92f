//! `setup` and `stream` on bad input: each problem gives a one-line message that names the
//! cause and the fix, and a non-zero exit; a good source is prepared idempotently.

use crate::support;

use std::time::Duration;

use support::{run, totesys, PgCluster, Proc};

/// The error line: the last line of stderr, which must start with `error:`.
fn error_line(stderr: &str) -> String {
    support::error_report(stderr)
}

fn setup(url: &str) -> (bool, String, String) {
    let (status, out, err) = run(&["setup", "--source-url", url], &[]);
    (status.success(), out, err)
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_prepares_a_source_idempotently() {
    let pg = PgCluster::start();
    let db = pg.create_db("good").await;
    totesys::create(&db).await;
    let url = pg.url("good");
    let (ok, out, err) = setup(&url);
    assert!(ok, "{out}{err}");
    assert!(out.contains("publication totes_cdc created"), "{out}");
    let published: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'totes_cdc'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 11, "every totesys table but _prisma_migrations");
    // Again: nothing to do.
    let (ok, out, _) = setup(&url);
    assert!(ok);
    assert!(out.contains("publishes every table"), "{out}");
    // A publication that lacks a table is completed and says so.
    db.batch_execute("ALTER PUBLICATION totes_cdc DROP TABLE staff")
        .await
        .unwrap();
    let (ok, out, _) = setup(&url);
    assert!(ok);
    assert!(out.contains("was missing public.staff: added"), "{out}");
    // The password never shows.
    db.batch_execute("CREATE ROLE secure LOGIN SUPERUSER PASSWORD 's3cret-pw'")
        .await
        .unwrap();
    let (ok, out, err) = setup(&pg.url_as("secure", "s3cret-pw", "good"));
    assert!(ok, "{out}{err}");
    assert!(out.contains("postgres://secure:***@"), "{out}");
    assert!(!out.contains("s3cret-pw") && !err.contains("s3cret-pw"));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_input_names_its_cause_and_fix() {
    let pg = PgCluster::start();
    let db = pg.create_db("bad").await;
    totesys::create(&db).await;
    db.batch_execute(
        "CREATE ROLE plain LOGIN;
         CREATE ROLE repl LOGIN REPLICATION;
         CREATE ROLE secure LOGIN REPLICATION PASSWORD 'right';
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO secure;",
    )
    .await
    .unwrap();

    // Host unreachable.
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/bad",
        support::pg::free_port()
    );
    let (ok, _, err) = setup(&dead);
    assert!(!ok);
    let line = error_line(&err);
    assert!(
        line.contains("cannot reach source-url") && line.contains("server is running"),
        "{line}"
    );
    // An empty URL, or an empty URL file (a secret not filled in): never the defaults.
    let (ok, _, err) = setup("");
    assert!(!ok);
    assert!(error_line(&err).contains("source-url is empty"), "{err}");
    let empty = support::temp_dir("empty-url").join("source-url");
    std::fs::write(&empty, "\n").unwrap();
    let (status, _, err) = support::run(
        &["setup", "--source-url-file", &empty.to_string_lossy()],
        &[],
    );
    assert!(!status.success());
    let line = error_line(&err);
    assert!(
        line.contains("the URL file") && line.contains("is empty"),
        "{line}"
    );
    // Wrong password.
    let (ok, _, err) = setup(&pg.url_as("secure", "wrong", "bad"));
    assert!(!ok);
    let line = error_line(&err);
    assert!(
        line.contains("password authentication failed for user \"secure\""),
        "{line}"
    );
    // Unknown database.
    let (ok, _, err) = setup(&pg.url("nosuchdb"));
    assert!(!ok);
    let line = error_line(&err);
    assert!(
        line.contains("database \"nosuchdb\" does not exist"),
        "{line}"
    );
    // A URL that is not one.
    let (ok, _, err) = setup("postgres://x@host:notaport/db");
    assert!(!ok);
    assert!(error_line(&err).contains("source-url is not a valid PostgreSQL URL"));
    // No REPLICATION.
    let (ok, _, err) = setup(&pg.url_as("plain", "", "bad"));
    assert!(!ok);
    let line = error_line(&err);
    assert!(line.contains("ALTER ROLE plain REPLICATION"), "{line}");
    // No SELECT.
    let (ok, _, err) = setup(&pg.url_as("repl", "", "bad"));
    assert!(!ok);
    let line = error_line(&err);
    assert!(
        line.contains("GRANT SELECT ON") && line.contains("TO repl"),
        "{line}"
    );
    // A table without primary key or replica identity.
    db.batch_execute("CREATE TABLE loose (a int, b text)")
        .await
        .unwrap();
    let (ok, _, err) = setup(&pg.url("bad"));
    assert!(!ok);
    let line = error_line(&err);
    assert!(
        line.contains("public.loose")
            && line.contains("ADD PRIMARY KEY")
            && line.contains("REPLICA IDENTITY FULL"),
        "{line}"
    );
    // `stream` checks the same before touching the slot, and the publication too.
    let state = support::temp_dir("bad").to_string_lossy().into_owned();
    let stream = |url: &str, extra: &[&str]| {
        let mut args = vec![
            "stream",
            "--sink",
            "null",
            "--source-url",
            url,
            "--state-dir",
            &state,
        ];
        args.extend_from_slice(extra);
        let (status, _, err) = run(&args, &[]);
        assert!(!status.success());
        error_line(&err)
    };
    let line = stream(&pg.url("bad"), &[]);
    assert!(
        line.contains("publication \"totes_cdc\" does not exist")
            && line.contains("totes-cdc setup"),
        "{line}"
    );
    db.batch_execute("CREATE PUBLICATION totes_cdc FOR TABLE staff, loose")
        .await
        .unwrap();
    let line = stream(&pg.url("bad"), &[]);
    assert!(
        line.contains("public.loose") && line.contains("REPLICA IDENTITY FULL"),
        "{line}"
    );
    db.batch_execute("ALTER PUBLICATION totes_cdc DROP TABLE loose")
        .await
        .unwrap();
    let line = stream(&pg.url("bad"), &["--tables", "public.staff,public.design"]);
    assert!(
        line.contains("does not publish public.design") && line.contains("ALTER PUBLICATION"),
        "{line}"
    );
    let line = stream(&pg.url("bad"), &["--slot", "Bad-Slot"]);
    assert!(
        line.contains("slot name \"Bad-Slot\" is not valid"),
        "{line}"
    );
    // A slot made for another plugin.
    db.batch_execute("SELECT pg_create_logical_replication_slot('other', 'test_decoding')")
        .await
        .unwrap();
    let line = stream(&pg.url("bad"), &["--slot", "other"]);
    assert!(
        line.contains("uses the output plugin test_decoding, not pgoutput"),
        "{line}"
    );
    assert!(line.contains("pg_drop_replication_slot('other')"), "{line}");
    // Nothing was lost or half-created: the slot for the good config still does not exist.
    let slots: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'totes_cdc'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_level_must_be_logical() {
    let pg = PgCluster::start_with(&[("wal_level", "replica")]);
    let db = pg.create_db("wal").await;
    totesys::create(&db).await;
    let (ok, _, err) = setup(&pg.url("wal"));
    assert!(!ok);
    let line = error_line(&err);
    assert!(
        line.contains("wal_level") && line.contains("'replica'") && line.contains("restart"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_confirms_and_exits_zero() {
    let pg = PgCluster::start();
    let db = pg.create_db("term").await;
    totesys::create(&db).await;
    totesys::publish(&db).await;
    let url = pg.url("term");
    let state = support::temp_dir("term").to_string_lossy().into_owned();
    let mut p = Proc::spawn(
        &[
            "stream",
            "--sink",
            "stdout",
            "--source-url",
            &url,
            "--state-dir",
            &state,
            "--status-interval",
            "10s",
        ],
        &[],
    );
    p.wait_log("streaming changes", Duration::from_secs(60));
    totesys::sale(&db, 1).await;
    p.wait_events("the sale", Duration::from_secs(60), |e| {
        e.iter()
            .any(|e| e["op"] == "c" && e["source"]["table"] == "payment")
    });
    let status = p.terminate(Duration::from_secs(60));
    assert!(status.success(), "exit {status:?}: {}", p.stderr());
    // Confirmed before exit, although the 10 s status interval had not come round: a restart
    // streams the sale no more.
    let again = Proc::spawn(
        &[
            "stream",
            "--sink",
            "stdout",
            "--source-url",
            &url,
            "--state-dir",
            &state,
        ],
        &[],
    );
    again.wait_log("streaming changes", Duration::from_secs(60));
    totesys::purchase(&db, 2).await;
    again.wait_events("the purchase", Duration::from_secs(60), |e| {
        e.iter().any(|e| e["source"]["table"] == "purchase_order")
    });
    assert!(
        !again
            .events()
            .iter()
            .any(|e| e["source"]["table"] == "sales_order"),
        "the confirmed sale came again"
    );
}
