//! PostgreSQL connections: URL parsing with the password masked, the session settings every
//! connection uses, and connection errors that name their cause and fix.

use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// Settings that fix the text form of values, so that a value read by the initial snapshot
/// (COPY) and the same value decoded from the WAL (pgoutput) are spelled the same.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,YMD -c IntervalStyle=iso_8601 -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex";

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
            PgError::Refused { .. } => {
                "check pg_hba.conf and the role's LOGIN/CONNECT privileges".into()
            }
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
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl PgUrl {
    /// Parses `url`; `what` names the option it came from (`source-url`) for error messages.
    pub fn parse(url: &str, what: &'static str) -> Result<Self, PgError> {
        let mut config = Config::from_str(url).map_err(|e| PgError::BadUrl {
            what,
            reason: e.to_string(),
        })?;
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
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_string(),
        };
        config.options(&options);
        config.application_name("totes-cdc");
        Ok(Self { what, config })
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

    /// The same server, another database.
    pub fn with_database(&self, database: &str) -> PgUrl {
        let mut config = self.config.clone();
        config.dbname(database);
        PgUrl {
            what: self.what,
            config,
        }
    }

    /// Opens a connection (its driver task runs in the background).
    pub async fn connect(&self) -> Result<Client, PgError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.connect_error(e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection closed: {e}");
            }
        });
        Ok(client)
    }

    /// Turns a connection failure into the error that names its cause.
    pub fn connect_error(&self, e: tokio_postgres::Error) -> PgError {
        let what = self.what;
        let target = self.target();
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
                c if c.starts_with("57P") || c.starts_with("53") => PgError::Unreachable {
                    what,
                    target,
                    cause: db.message().to_string(),
                },
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

    /// Settings for a replication session on this server.
    pub fn replication_config(
        &self,
        slot: &str,
        publication: &str,
    ) -> pgwire_replication::ReplicationConfig {
        pgwire_replication::ReplicationConfig::new(
            self.host(),
            self.user(),
            self.password(),
            self.database(),
            quote_ident(slot),
            publication.to_string(),
        )
        .with_port(self.port())
        .with_options(SESSION_OPTIONS)
        .with_application_name("totes-cdc")
    }
}

/// Quotes an identifier for SQL (`"transaction"`, `"PaymentTypeName"`).
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// Words that must be quoted to be used as names (PostgreSQL's reserved keywords, and
/// `transaction`, which the totesys model quotes).
const KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "constraint",
    "create",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "initially",
    "intersect",
    "into",
    "lateral",
    "leading",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "placing",
    "primary",
    "references",
    "returning",
    "select",
    "session_user",
    "some",
    "symmetric",
    "table",
    "then",
    "to",
    "trailing",
    "transaction",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "when",
    "where",
    "window",
    "with",
];

/// An identifier as a person would write it: bare when it can be, quoted when it must be.
pub fn ident(name: &str) -> String {
    let plain = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !KEYWORDS.contains(&name);
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// Quotes a string literal for SQL.
pub fn quote_literal(value: &str) -> String {
    postgres_protocol::escape::escape_literal(value)
}

/// The SQLSTATE inside a pgwire-replication server error (`... (SQLSTATE 55006)`).
pub fn sqlstate_of(message: &str) -> Option<&str> {
    let i = message.rfind("SQLSTATE ")?;
    message.get(i + 9..i + 14)
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
