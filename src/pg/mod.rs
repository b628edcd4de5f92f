//! PostgreSQL connections: URL parsing with the password masked, libpq's TLS options on every
//! connection (`tls`, `options`), the session settings every connection uses, and connection
//! errors that name their cause and fix.

mod auth_probe;
mod names;
mod options;
mod pgpass;
pub mod tls;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

pub use names::{ident, quote_ident, quote_literal, sqlstate_of};
use tls::{SslMode, TlsOptions};

/// Settings that fix the text form of values, so that a value read by the initial snapshot
/// (COPY) and the same value decoded from the WAL (pgoutput) are spelled the same.
/// Also TCP keepalives on the server's side of every session (10 s idle, then every 5 s, gone
/// after 3 missed): a client whose host died or whose network was cut loses its session, its
/// transaction and its locks in about 25 s, not the two hours of the kernel's defaults.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,YMD -c IntervalStyle=iso_8601 -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex \
     -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3";

#[derive(Debug, Error)]
pub enum PgError {
    #[error("{what} is not a valid PostgreSQL URL ({reason})")]
    BadUrl { what: &'static str, reason: String },
    #[error("cannot reach {what} at {target}: {cause}")]
    Unreachable {
        what: &'static str,
        target: String,
        cause: String,
    },
    #[error("{what} ({target}): password authentication failed for user \"{user}\"")]
    Auth {
        what: &'static str,
        target: String,
        user: String,
    },
    #[error("{what} ({target}): database \"{database}\" does not exist")]
    NoDatabase {
        what: &'static str,
        target: String,
        database: String,
    },
    #[error("{what} ({target}) refused the connection: {message}")]
    Refused {
        what: &'static str,
        target: String,
        message: String,
    },
    #[error("{what}: {message}")]
    TlsSetup { what: &'static str, message: String },
    #[error("{what} ({target}) asks for the password {method} over an unencrypted connection, where anyone on the network path can read it")]
    InsecureAuth {
        what: &'static str,
        target: String,
        method: &'static str,
    },
    #[error("{what} ({target}): {problem}")]
    Tls {
        what: &'static str,
        target: String,
        problem: String,
        fix: String,
    },
    #[error("{what} ({target}): {context}: {source}")]
    Query {
        what: &'static str,
        target: String,
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl crate::fix::Fix for PgError {
    fn fix(&self) -> Option<String> {
        Some(match self {
            PgError::BadUrl { .. } => {
                "write it as postgres://user:password@host:port/database".into()
            }
            PgError::Unreachable { what, .. } => format!(
                "check the host and port in {what}, and that the server is running and accepts TCP connections"
            ),
            PgError::Auth { what, .. } => format!("check the user and password in {what}"),
            PgError::NoDatabase { what, .. } => {
                format!("create it, or fix the database name in {what}")
            }
            PgError::Refused { message, .. } if message.contains("no encryption") => {
                "the server takes only encrypted connections from here (pg_hba.conf hostssl): set sslmode=require, or verify-full with sslrootcert".into()
            }
            PgError::Refused { message, .. } if message.contains("client certificate") => {
                "the server authenticates by client certificate (pg_hba.conf cert or clientcert=verify-full): give sslcert and sslkey, a certificate for this user signed by a CA in the server's ssl_ca_file".into()
            }
            PgError::Refused { .. } => {
                "check pg_hba.conf and the role's LOGIN/CONNECT privileges".into()
            }
            PgError::TlsSetup { what, .. } => {
                format!("fix the TLS options of {what} (sslmode, sslrootcert, sslcert, sslkey)")
            }
            PgError::Tls { fix, .. } => fix.clone(),
            PgError::InsecureAuth { .. } => "encrypt the connection (sslmode=require or stricter; the server needs ssl = on), or give the role a SCRAM password (password_encryption = 'scram-sha-256', then set the password again, and scram-sha-256 in pg_hba.conf); to accept the risk, allow the method in the URL: require_auth=password,md5,scram-sha-256".into(),
            PgError::Query { .. } => return None,
        })
    }
}

impl PgError {
    /// Whether retrying later may succeed (the server is down or restarting), as opposed to a
    /// problem only a configuration change fixes.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Unreachable { .. } => true,
            PgError::Query { source, .. } => is_transient(source),
            _ => false,
        }
    }
}

/// Whether a tokio-postgres error is worth retrying (`error_policy` decides).
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    crate::error_policy::for_pg(e) == crate::error_policy::Action::Retry
}

/// A parsed PostgreSQL connection URL (or key=value string).
#[derive(Clone)]
pub struct PgUrl {
    what: &'static str,
    config: Config,
    tls: TlsOptions,
    /// The rustls configuration of every connection; `None` for sslmode=disable.
    tls_config: Option<Arc<rustls::ClientConfig>>,
    require_auth: Option<auth_probe::RequireAuth>,
    /// Set once a probe found the server does not ask for the password in a readable form
    /// (SQL sessions, replication sessions: pg_hba.conf treats them apart).
    auth_checked: Arc<[AtomicBool; 2]>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl PgUrl {
    /// Parses `url`; `what` names the option it came from (`source-url`) for error messages.
    pub fn parse(url: &str, what: &'static str) -> Result<Self, PgError> {
        let bad = |reason: String| PgError::BadUrl { what, reason };
        let (rest, ours) = options::extract(url).map_err(bad)?;
        let tls = options::tls_options(&ours).map_err(bad)?;
        let require_auth = options::require_auth(&ours).map_err(bad)?;
        let mut config = Config::from_str(&rest).map_err(|e| bad(e.to_string()))?;
        config.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls_config = tls
            .client_config()
            .map_err(|message| PgError::TlsSetup { what, message })?;
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "postgres".into());
            config.user(&user);
        }
        if config.get_password().is_none() {
            if let Ok(pw) = std::env::var("PGPASSWORD") {
                config.password(pw);
            }
        }
        if config.get_password().is_none() {
            let host = match config.get_hosts().first() {
                Some(Host::Tcp(h)) => h.clone(),
                _ => "localhost".into(),
            };
            let port = config.get_ports().first().copied().unwrap_or(5432);
            let user = config.get_user().unwrap_or("postgres").to_string();
            let db = config.get_dbname().unwrap_or(&user).to_string();
            if let Some(pw) = pgpass::lookup(&host, port, &db, &user) {
                config.password(pw);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // And on ours: a server gone without a word (a failover, a cut network) is noticed in
        // about 25 s and the connection made again.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_string(),
        };
        config.options(&options);
        config.application_name("totes-cdc");
        Ok(Self {
            what,
            config,
            tls,
            tls_config,
            require_auth,
            auth_checked: Arc::default(),
        })
    }

    pub fn what(&self) -> &'static str {
        self.what
    }

    pub fn user(&self) -> String {
        self.config.get_user().unwrap_or("postgres").to_string()
    }

    pub fn password(&self) -> String {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    }

    pub fn database(&self) -> String {
        self.config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| self.user())
    }

    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        }
    }

    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// `host:port/database`, for messages.
    pub fn target(&self) -> String {
        format!("{}:{}/{}", self.host(), self.port(), self.database())
    }

    /// The URL with the password masked, safe to log.
    pub fn masked(&self) -> String {
        let pw = if self.config.get_password().is_some() {
            ":***"
        } else {
            ""
        };
        format!(
            "postgres://{}{pw}@{}:{}/{}",
            self.user(),
            self.host(),
            self.port(),
            self.database()
        )
    }

    /// The same URL with this password (read from a password file).
    pub fn with_password(&self, password: &str) -> PgUrl {
        let mut config = self.config.clone();
        config.password(password);
        PgUrl {
            config,
            ..self.clone()
        }
    }

    /// The same server, another database.
    pub fn with_database(&self, database: &str) -> PgUrl {
        let mut config = self.config.clone();
        config.dbname(database);
        PgUrl {
            config,
            // pg_hba.conf may treat another database otherwise.
            auth_checked: Arc::default(),
            ..self.clone()
        }
    }

    /// Opens a connection (its driver task runs in the background).
    pub async fn connect(&self) -> Result<Client, PgError> {
        // The driver task of each kind of connection (plain or TLS streams differ in type).
        fn drive<F>(connection: F)
        where
            F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
        {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("connection closed: {e}");
                }
            });
        }
        self.check_auth(false).await?;
        match &self.tls_config {
            None => {
                let (client, connection) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(|e| self.connect_error(e))?;
                drive(connection);
                Ok(client)
            }
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls::MakeRustls(tls.clone()))
                    .await
                    .map_err(|e| self.connect_error(e))?;
                drive(connection);
                Ok(client)
            }
        }
    }

    /// Refuses to connect where the password would cross the network readable (cleartext or
    /// MD5 over an unencrypted connection) unless `require_auth` allows it; once per URL.
    pub async fn check_auth(&self, replication: bool) -> Result<(), PgError> {
        let checked = &self.auth_checked[usize::from(replication)];
        if checked.load(Ordering::Relaxed)
            || !matches!(self.tls.mode, SslMode::Disable | SslMode::Prefer)
            || self.config.get_password().is_none()
        {
            return Ok(());
        }
        let (host, user, database) = (self.host(), self.user(), self.database());
        let probe = auth_probe::Probe {
            host: &host,
            port: self.port(),
            user: &user,
            database: &database,
            replication,
            try_tls: self.tls.mode == SslMode::Prefer,
            tls: self.tls_config.clone(),
            require_auth: self.require_auth.as_ref(),
            timeout: self
                .config
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(10)),
        };
        match probe.run().await {
            auth_probe::Verdict::Safe => {
                checked.store(true, Ordering::Relaxed);
                Ok(())
            }
            auth_probe::Verdict::Refused(method) => Err(PgError::InsecureAuth {
                what: self.what,
                target: self.target(),
                method: if method == "md5" {
                    "as an MD5 hash"
                } else {
                    "in clear text"
                },
            }),
        }
    }

    /// The TLS failure behind a connection error, with its remedy.
    fn tls_error(&self, e: &tokio_postgres::Error) -> Option<PgError> {
        let (problem, fix) = tls::explain(e, self.tls.mode)?;
        Some(PgError::Tls {
            what: self.what,
            target: self.target(),
            problem,
            fix,
        })
    }

    /// Turns a connection failure into the error that names its cause.
    pub fn connect_error(&self, e: tokio_postgres::Error) -> PgError {
        let what = self.what;
        let target = self.target();
        if let Some(tls) = self.tls_error(&e) {
            return tls;
        }
        if let Some(db) = e.as_db_error() {
            return match db.code().code() {
                "28P01" => PgError::Auth {
                    what,
                    target,
                    user: self.user(),
                },
                "3D000" => PgError::NoDatabase {
                    what,
                    target,
                    database: self.database(),
                },
                c if crate::error_policy::for_connect_refusal(c, db.message())
                    == crate::error_policy::Action::Retry =>
                {
                    PgError::Unreachable {
                        what,
                        target,
                        cause: db.message().to_string(),
                    }
                }
                _ => PgError::Refused {
                    what,
                    target,
                    message: db.message().to_string(),
                },
            };
        }
        let mut cause = e.to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        PgError::Unreachable {
            what,
            target,
            cause,
        }
    }

    /// Wraps a query error with what was being done.
    pub fn query_error(
        &self,
        context: impl Into<String>,
        source: tokio_postgres::Error,
    ) -> PgError {
        PgError::Query {
            what: self.what,
            target: self.target(),
            context: context.into(),
            source,
        }
    }

    /// Settings for a replication session on this server, with the same TLS options. The
    /// slot and publication are quoted: `START_REPLICATION` and `publication_names` read
    /// identifiers, so a mixed-case name keeps its case.
    pub fn replication_config(
        &self,
        slot: &str,
        publication: &str,
    ) -> Result<pgwire_replication::ReplicationConfig, PgError> {
        let tls = self
            .tls
            .replication(&self.host())
            .map_err(|message| PgError::TlsSetup {
                what: self.what,
                message,
            })?;
        Ok(pgwire_replication::ReplicationConfig::new(
            self.host(),
            self.user(),
            self.password(),
            self.database(),
            quote_ident(slot),
            quote_ident(publication),
        )
        .with_port(self.port())
        .with_tls(tls)
        .with_options(SESSION_OPTIONS)
        .with_application_name("totes-cdc"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_password() {
        let u = PgUrl::parse(
            "postgres://alice:s3cret@db.example:6543/totesys",
            "source-url",
        )
        .unwrap();
        assert_eq!(u.masked(), "postgres://alice:***@db.example:6543/totesys");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(u.password(), "s3cret");
    }

    #[test]
    fn bad_url_names_the_option() {
        let e = PgUrl::parse("postgres://a@h:notaport/x", "source-url").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("source-url is not a valid PostgreSQL URL"),
            "{e}"
        );
    }

    #[test]
    fn sqlstate() {
        assert_eq!(
            sqlstate_of("replication slot \"x\" is active (SQLSTATE 55006)"),
            Some("55006")
        );
        assert_eq!(sqlstate_of("no code"), None);
    }
}
