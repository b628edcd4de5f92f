//! Connections as production makes them: a server that takes TCP connections only over TLS
//! with SCRAM passwords (as managed databases that force SSL), reached with `verify-full`
//! against the test CA, URLs and passwords read from files (mounted secrets), a mixed-case
//! publication; and every TLS or authentication problem stopping with its cause and fix,
//! never retried as "unreachable". The password shows in no output.

use crate::support;

use std::time::Duration;

use support::pg::TestCerts;
use support::star::wait_star;
use support::{totesys, PgCluster, Proc};

/// URL-special characters, so it must be percent-encoded in a URL.
const PASSWORD: &str = "p@ss:w/rd?#%&=s3cr";
const WAIT: Duration = Duration::from_secs(120);

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The TLS-only cluster with a password-checked superuser `app` (which replicates too).
async fn tls_cluster(certs: &TestCerts) -> PgCluster {
    let pg = PgCluster::start_tls_only(certs);
    pg.connect("postgres")
        .await
        .batch_execute(&format!(
            "CREATE ROLE app LOGIN SUPERUSER REPLICATION PASSWORD '{PASSWORD}'"
        ))
        .await
        .unwrap();
    pg
}

/// `app`'s URL for `db` on `host`, with `params` (and the password unless `with_password` is off).
fn url(pg: &PgCluster, host: &str, db: &str, params: &str, with_password: bool) -> String {
    let auth = if with_password {
        format!("app:{}", pct(PASSWORD))
    } else {
        "app".into()
    };
    format!("postgres://{auth}@{host}:{}/{db}?{params}", pg.port)
}

/// A file only its owner may read, holding `text`.
fn secret(dir: &std::path::Path, name: &str, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

fn assert_no_password(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD) && !text.contains(&pct(PASSWORD)),
        "the password shows in {what}:\n{text}"
    );
}

/// Every session of `app` on the server is encrypted, the WAL sender's included.
async fn assert_all_encrypted(pg: &PgCluster) {
    let admin = pg.connect("postgres").await;
    let rows = admin
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename = 'app'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        rows.iter().any(|r| r.get::<_, String>(0) == "walsender"),
        "no replication session of app"
    );
    for r in &rows {
        assert!(
            r.get::<_, bool>(1),
            "{} is not encrypted",
            r.get::<_, String>(0)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_pipeline_runs_on_a_tls_only_server_with_verify_full() {
    let certs = TestCerts::make();
    let pg = tls_cluster(&certs).await;
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::sale(&src, 1).await;
    let dir = support::temp_dir("tls-run");
    let tls = format!("sslmode=verify-full&sslrootcert={}", certs.ca.display());
    // The source URL in a file; the warehouse's password in a file of its own.
    let source_file = secret(
        &dir,
        "source-url",
        &url(&pg, "localhost", "src", &tls, true),
    );
    let wh_url = url(&pg, "localhost", "wh", &tls, false);
    let wh_password = secret(&dir, "wh-password", PASSWORD);
    let state = dir.join("state").to_string_lossy().into_owned();
    let lake = dir.join("lake").to_string_lossy().into_owned();
    let common = [
        "--source-url-file",
        source_file.as_str(),
        "--publication",
        "MyPub",
        "--warehouse-url",
        wh_url.as_str(),
        "--warehouse-password-file",
        wh_password.as_str(),
    ];
    let mut setup = vec!["setup"];
    setup.extend(common);
    let (status, out, err) = support::run(&setup, &[]);
    assert!(status.success(), "{out}{err}");
    assert_no_password("setup's output", &format!("{out}{err}"));

    let mut run = vec![
        "run",
        "--state-dir",
        &state,
        "--lake",
        &lake,
        "--batch-max-ms",
        "200",
    ];
    run.extend(common);
    let p = Proc::spawn(&run, &[]);
    p.wait_log("streaming changes", WAIT);
    for n in 2..=20 {
        totesys::sale(&src, n).await;
    }
    wait_star(&src, &wh, WAIT).await;
    assert_all_encrypted(&pg).await;
    assert_no_password("the pipeline's log", &p.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_and_consume_run_on_a_tls_only_server_with_verify_full() {
    let certs = TestCerts::make();
    let pg = tls_cluster(&certs).await;
    let moto = support::moto::Moto::start();
    moto.create_stream("tls", 2).await;
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::publish(&src).await;
    totesys::sale(&src, 1).await;
    let dir = support::temp_dir("tls-stream");
    let tls = format!("sslmode=verify-full&sslrootcert={}", certs.ca.display());
    let src_url = url(&pg, "localhost", "src", &tls, true);
    let wh_url = url(&pg, "localhost", "wh", &tls, true);
    let state = dir.join("state").to_string_lossy().into_owned();
    let lake = dir.join("lake").to_string_lossy().into_owned();
    support::setup(&src_url, &wh_url, &[]);
    // The streamer takes its password from a libpq password file (':' escaped there), the
    // consumer its TLS settings from libpq's environment variables.
    let pgpass = secret(
        &dir,
        "pgpass",
        &format!(
            "localhost:{}:src:app:{}",
            pg.port,
            PASSWORD.replace('\\', "\\\\").replace(':', "\\:")
        ),
    );
    let mut env = moto.env();
    env.push(("PGPASSFILE", pgpass.as_str()));
    let streamer_url = url(&pg, "localhost", "src", &tls, false);
    let streamer = Proc::spawn(
        &support::stream_kinesis_args("tls", &streamer_url, &state, &lake),
        &env,
    );
    let ca = certs.ca.display().to_string();
    let mut env = moto.env();
    env.extend([("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())]);
    let consumer_url = url(&pg, "localhost", "wh", "", true);
    let consumer = Proc::spawn(&support::consume_args("tls", &consumer_url, &lake), &env);
    streamer.wait_log("streaming changes", WAIT);
    for n in 2..=20 {
        totesys::sale(&src, n).await;
    }
    wait_star(&src, &wh, WAIT).await;
    assert_all_encrypted(&pg).await;
    assert_no_password("the streamer's log", &streamer.stderr());
    assert_no_password("the consumer's log", &consumer.stderr());
}

/// Runs `setup` on `source` and returns its error report; it must end, and fail.
fn setup_error(source: &str) -> String {
    let mut p = Proc::spawn(&["setup", "--source-url", source], &[]);
    let status = p.wait(Duration::from_secs(60));
    assert!(!status.success(), "setup succeeded on {source}");
    let err = p.stderr();
    assert_no_password("an error", &err);
    support::error_report(&err)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tls_and_authentication_problem_names_its_cause_and_fix() {
    let certs = TestCerts::make();
    let pg = tls_cluster(&certs).await;
    let db = pg.create_db("src").await;
    totesys::create(&db).await;
    let ca = certs.ca.display().to_string();
    let other = certs.other_ca.display().to_string();

    // A CA that did not sign the server's certificate: names the file and the real issuer.
    let e = setup_error(&url(
        &pg,
        "localhost",
        "src",
        &format!("sslmode=verify-full&sslrootcert={other}"),
        true,
    ));
    assert!(
        e.contains("not signed by a CA in sslrootcert")
            && e.contains(&other)
            && e.contains("totes-cdc test CA")
            && e.contains("fix: give sslrootcert the CA"),
        "{e}"
    );

    // verify-full with a host name the certificate does not name; verify-ca takes it.
    let e = setup_error(&url(
        &pg,
        "127.0.0.1",
        "src",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
        true,
    ));
    assert!(
        e.contains("certificate is for localhost, not 127.0.0.1") && e.contains("verify-ca"),
        "{e}"
    );
    let (status, out, err) = support::run(
        &[
            "setup",
            "--source-url",
            &url(
                &pg,
                "127.0.0.1",
                "src",
                &format!("sslmode=verify-ca&sslrootcert={ca}"),
                true,
            ),
        ],
        &[],
    );
    assert!(status.success(), "verify-ca: {out}{err}");

    // verify-full without a CA to verify with.
    let e = setup_error(&url(&pg, "localhost", "src", "sslmode=verify-full", true));
    assert!(
        e.contains("needs the CA") && e.contains("sslrootcert"),
        "{e}"
    );

    // The server refuses a plain connection (hostnossl ... reject).
    let e = setup_error(&url(&pg, "localhost", "src", "sslmode=disable", true));
    assert!(
        e.contains("no encryption") && e.contains("fix:") && e.contains("sslmode=require"),
        "{e}"
    );

    // A wrong password.
    let wrong = format!(
        "postgres://app:wrong@localhost:{}/src?sslmode=verify-full&sslrootcert={ca}",
        pg.port
    );
    let e = setup_error(&wrong);
    assert!(
        e.contains("password authentication failed for user \"app\""),
        "{e}"
    );

    // A server without TLS when TLS is required, and channel binding without TLS.
    let plain = PgCluster::start();
    totesys::create(&plain.create_db("src").await).await;
    plain
        .connect("postgres")
        .await
        .batch_execute("CREATE ROLE secure LOGIN SUPERUSER PASSWORD 'right'")
        .await
        .unwrap();
    let e = setup_error(&format!(
        "postgres://secure:right@127.0.0.1:{}/src?sslmode=require",
        plain.port
    ));
    assert!(
        e.contains("does not offer TLS") && e.contains("ssl = on"),
        "{e}"
    );
    let e = setup_error(&format!(
        "postgres://secure:right@127.0.0.1:{}/src?sslmode=disable&channel_binding=require",
        plain.port
    ));
    assert!(e.contains("channel binding") && e.contains("fix:"), "{e}");

    // A password the server would take as an MD5 hash or in clear text over an unencrypted
    // connection is not sent, unless require_auth allows it.
    plain
        .connect("postgres")
        .await
        .batch_execute(
            "SET password_encryption = 'md5';
             CREATE ROLE md5user LOGIN SUPERUSER PASSWORD 'pw';
             CREATE ROLE clearuser LOGIN SUPERUSER PASSWORD 'pw';",
        )
        .await
        .unwrap();
    let e = setup_error(&format!(
        "postgres://md5user:pw@127.0.0.1:{}/src",
        plain.port
    ));
    assert!(
        e.contains("asks for the password as an MD5 hash over an unencrypted connection")
            && e.contains("require_auth"),
        "{e}"
    );
    let e = setup_error(&format!(
        "postgres://clearuser:pw@127.0.0.1:{}/src?sslmode=disable",
        plain.port
    ));
    assert!(e.contains("in clear text"), "{e}");
    let (status, out, err) = support::run(
        &[
            "setup",
            "--source-url",
            &format!(
                "postgres://md5user:pw@127.0.0.1:{}/src?require_auth=md5",
                plain.port
            ),
        ],
        &[],
    );
    assert!(status.success(), "require_auth=md5: {out}{err}");

    // Configuration errors stop `run` too: it does not wait them out as an outage.
    let state = support::temp_dir("tls-stop").to_string_lossy().into_owned();
    let bad = url(
        &pg,
        "localhost",
        "src",
        &format!("sslmode=verify-full&sslrootcert={other}"),
        true,
    );
    let mut p = Proc::spawn(&support::run_args(&bad, &bad, &state, "none"), &[]);
    assert!(!p.wait(Duration::from_secs(60)).success());

    // A config file that does not parse is reported by line, not quoted.
    let dir = support::temp_dir("tls-config");
    let config = dir.join("totes-cdc.toml");
    std::fs::write(
        &config,
        format!(
            "slot = \"x\"\nsource-url = \"{}\n",
            url(&pg, "localhost", "src", "", true)
        ),
    )
    .unwrap();
    let (status, out, err) = support::run(&["setup", "--config", &config.to_string_lossy()], &[]);
    assert!(!status.success());
    assert_no_password("a config parse error", &format!("{out}{err}"));
    assert!(err.contains("line 2"), "{err}");

    // --help shows no URL from the environment.
    let env_url = url(&pg, "localhost", "src", "sslmode=require", true);
    for cmd in ["run", "stream", "setup", "consume", "status"] {
        let (_, out, err) = support::run(
            &[cmd, "--help"],
            &[
                ("TOTES_CDC_SOURCE_URL", env_url.as_str()),
                ("TOTES_CDC_WAREHOUSE_URL", env_url.as_str()),
            ],
        );
        assert_no_password(&format!("{cmd} --help"), &format!("{out}{err}"));
    }
}

/// Issue 12: a server that authenticates by client certificate alone (`cert`, i.e.
/// clientcert=verify-full, no password): the pipeline runs with `sslcert`/`sslkey` on every
/// connection, replication included, and each session shows the certificate; without one, or
/// with one from another CA, setup stops with the cause and the fix.
#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_authenticate_every_connection() {
    let certs = TestCerts::make();
    let pg = PgCluster::start_client_cert_only(&certs);
    pg.connect("postgres")
        .await
        .batch_execute("CREATE ROLE app LOGIN SUPERUSER REPLICATION")
        .await
        .unwrap();
    let src = pg.create_db("src").await;
    let wh = pg.create_db("wh").await;
    totesys::create(&src).await;
    totesys::sale(&src, 1).await;
    let tls = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            certs.ca.display(),
            cert.display(),
            key.display()
        )
    };
    let with_cert = tls(&certs.client_cert, &certs.client_key);
    let src_url = url(&pg, "localhost", "src", &with_cert, false);
    let wh_url = url(&pg, "localhost", "wh", &with_cert, false);

    // No client certificate, or one the server's CA did not sign: stopped with the fix.
    let e = setup_error(&url(
        &pg,
        "localhost",
        "src",
        &format!("sslmode=verify-full&sslrootcert={}", certs.ca.display()),
        false,
    ));
    assert!(
        e.contains("requires a valid client certificate")
            && e.contains("fix: the server authenticates by client certificate")
            && e.contains("give sslcert and sslkey"),
        "{e}"
    );
    let e = setup_error(&url(
        &pg,
        "localhost",
        "src",
        &tls(&certs.stranger_cert, &certs.stranger_key),
        false,
    ));
    assert!(
        e.contains("the server refused the client certificate")
            && e.contains("fix: give sslcert and sslkey a client certificate"),
        "{e}"
    );

    support::setup(&src_url, &wh_url, &[]);
    let dir = support::temp_dir("tls-cert");
    let state = dir.join("state").to_string_lossy().into_owned();
    let lake = dir.join("lake").to_string_lossy().into_owned();
    let p = Proc::spawn(&support::run_args(&src_url, &wh_url, &state, &lake), &[]);
    p.wait_log("streaming changes", WAIT);
    for n in 2..=10 {
        totesys::sale(&src, n).await;
    }
    wait_star(&src, &wh, WAIT).await;
    assert_all_encrypted(&pg).await;
    // Every session of app, the WAL sender's included, came with the client certificate.
    let dns: Vec<Option<String>> = pg
        .connect("postgres")
        .await
        .query(
            "SELECT s.client_dn FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'app'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !dns.is_empty() && dns.iter().all(|d| d.as_deref() == Some("/CN=app")),
        "{dns:?}"
    );
}
