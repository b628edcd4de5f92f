//! Throwaway PostgreSQL 15 clusters for tests: initdb into a fresh directory, a free loopback
//! port, `wal_level=logical`. Works as root (the server runs as the `postgres` user, in a
//! directory it owns) and as an ordinary user. Stopped and removed on drop, also on panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The server binaries: `TOTES_CDC_PG_BIN`, else `pg_config --bindir`, else Debian's path.
pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TOTES_CDC_PG_BIN") {
        return PathBuf::from(p);
    }
    for candidate in ["/usr/lib/postgresql/15/bin"] {
        if Path::new(candidate).join("initdb").exists() {
            return PathBuf::from(candidate);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return p;
        }
    }
    panic!("PostgreSQL 15 server binaries not found: install postgresql-15 (make test does) or set TOTES_CDC_PG_BIN");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

pub struct PgCluster {
    pub root: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

impl PgCluster {
    /// A new cluster with the default test settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A new cluster with extra `postgresql.conf` settings.
    pub fn start_with(extra: &[(&str, &str)]) -> Self {
        // Password-checked roles for authentication tests (SCRAM, MD5 and clear text); everyone
        // else is trusted.
        let hba = "host all secure 127.0.0.1/32 scram-sha-256\n\
                   host all md5user 127.0.0.1/32 md5\n\
                   host all clearuser 127.0.0.1/32 password\n\
                   host all all 127.0.0.1/32 trust\n\
                   host replication secure 127.0.0.1/32 scram-sha-256\n\
                   host replication all 127.0.0.1/32 trust\n\
                   local all all trust\n\
                   local replication all trust\n";
        Self::start_configured(extra, hba, None)
    }

    /// A cluster that offers TLS with `certs`' server certificate beside plain connections
    /// (the default test authentication), for measuring both on one WAL.
    #[allow(
        dead_code,
        reason = "the capture benchmark's cluster; no test needs one"
    )]
    pub fn start_with_ssl(extra: &[(&str, &str)], certs: &TestCerts) -> Self {
        let mut conf = vec![
            ("ssl", "on"),
            ("ssl_cert_file", "'server.crt'"),
            ("ssl_key_file", "'server.key'"),
        ];
        conf.extend_from_slice(extra);
        let hba = "host all all 127.0.0.1/32 trust\n\
                   host replication all 127.0.0.1/32 trust\n\
                   local all all trust\n\
                   local replication all trust\n";
        Self::start_configured(&conf, hba, Some(certs))
    }

    /// A cluster that takes TCP connections only over TLS with a SCRAM password (as a managed
    /// database that forces SSL), with `certs`' server certificate; the harness itself connects
    /// through the Unix socket.
    pub fn start_tls_only(certs: &TestCerts) -> Self {
        Self::start_tls_only_with(
            certs,
            "scram-sha-256",
            ("password_encryption", "'scram-sha-256'"),
        )
    }

    /// A cluster that takes TCP connections only over TLS with a client certificate signed by
    /// `certs`' CA whose common name is the user (`cert` authentication: clientcert=verify-full,
    /// no password).
    pub fn start_client_cert_only(certs: &TestCerts) -> Self {
        Self::start_tls_only_with(certs, "cert", ("ssl_ca_file", "'ca.pem'"))
    }

    /// TLS only, for databases and replication, authenticated by `method`.
    fn start_tls_only_with(certs: &TestCerts, method: &str, setting: (&str, &str)) -> Self {
        let hba = format!(
            "hostssl all all 127.0.0.1/32 {method}\n\
             hostssl replication all 127.0.0.1/32 {method}\n\
             hostnossl all all 127.0.0.1/32 reject\n\
             hostnossl replication all 127.0.0.1/32 reject\n\
             local all all trust\n\
             local replication all trust\n"
        );
        Self::start_configured(
            &[
                ("ssl", "on"),
                ("ssl_cert_file", "'server.crt'"),
                ("ssl_key_file", "'server.key'"),
                setting,
            ],
            &hba,
            Some(certs),
        )
    }

    fn start_configured(extra: &[(&str, &str)], hba: &str, certs: Option<&TestCerts>) -> Self {
        let bin = pg_bin();
        let as_postgres = is_root();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("totes-cdc-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create cluster dir");
        let data = root.join("data");
        let mut c = Self {
            root,
            data,
            port: 0,
            bin,
            as_postgres,
        };
        if as_postgres {
            c.chown();
        }
        c.run_tool(
            "initdb",
            &[
                "-D",
                c.data.to_str().unwrap_or_default(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\n\
             wal_level = logical\n\
             max_replication_slots = 20\n\
             max_wal_senders = 20\n\
             wal_sender_timeout = '10s'\n\
             max_connections = 60\n\
             shared_buffers = '32MB'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             logging_collector = off\n\
             log_min_messages = warning\n\
             TimeZone = 'UTC'\n",
        );
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            c.root.display()
        ));
        for (k, v) in extra {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        std::fs::write(c.data.join("postgresql.auto.conf"), conf).expect("write conf");
        std::fs::write(c.data.join("pg_hba.conf"), hba).expect("write hba");
        if let Some(certs) = certs {
            for (from, to) in [
                (&certs.server_cert, "server.crt"),
                (&certs.server_key, "server.key"),
                (&certs.ca, "ca.pem"),
            ] {
                std::fs::copy(from, c.data.join(to)).expect("copy the server certificate");
            }
            set_mode(&c.data.join("server.key"), 0o600);
        }
        if as_postgres {
            c.chown();
        }
        for _ in 0..5 {
            c.port = free_port();
            if c.try_start() {
                return c;
            }
        }
        panic!("could not start PostgreSQL; log:\n{}", c.log());
    }

    fn chown(&self) {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&self.root)
            .status();
    }

    fn run_tool(&self, tool: &str, args: &[&str]) -> bool {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn try_start(&self) -> bool {
        let opts = format!("-p {}", self.port);
        self.run_tool(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap_or_default(),
                "-l",
                self.log_path().to_str().unwrap_or_default(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Stops the server (fast shutdown: sessions are terminated).
    pub fn stop(&self) {
        self.run_tool(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap_or_default(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the server again on the same port.
    pub fn start_again(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.try_start() {
            assert!(Instant::now() < deadline, "restart failed:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// A URL for `db` as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A URL for `db` as `user` with `password`.
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// The superuser's connection, through the Unix socket (which every cluster trusts).
    pub async fn connect(&self, db: &str) -> Client {
        let socket = format!(
            "host={} port={} user=postgres dbname={db}",
            self.root.display(),
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&socket, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {db}: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Creates a database and returns a connection to it.
    pub async fn create_db(&self, name: &str) -> Client {
        let admin = self.connect("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.connect(name).await
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.run_tool(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A CA, a server certificate it signed for `localhost` (DNS name only), and another CA that
/// signed nothing here, made with the `openssl` CLI.
pub struct TestCerts {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate for the user `app`, signed by the CA, and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The same name, signed by the other CA.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

impl TestCerts {
    pub fn make() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("totes-cdc-certs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the certificate dir");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl (the CLI) is needed to make test certificates");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [("ca", "totes-cdc test CA"), ("other_ca", "some other CA")] {
            let (key, pem, subj) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("/CN={cn}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &pem, "-days", "3", "-subj", &subj]);
            openssl(&args);
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
        )
        .expect("write server.ext");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&args);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3",
            "-extfile",
            "server.ext",
        ]);
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = clientAuth\n",
        )
        .expect("write client.ext");
        for (name, ca) in [("client", "ca"), ("stranger", "other_ca")] {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=app"]);
            openssl(&args);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "3",
                "-extfile",
                "client.ext",
            ]);
        }
        Self {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other_ca.pem"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            stranger_cert: dir.join("stranger.crt"),
            stranger_key: dir.join("stranger.key"),
        }
    }
}
