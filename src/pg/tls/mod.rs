//! TLS on every PostgreSQL connection, with libpq's `sslmode` meanings, on rustls (the stack
//! the AWS SDK already brings): SQL connections through a tokio-postgres connector here, the
//! replication connection through pgwire-replication's own rustls support with the same
//! settings. A certificate the settings refuse is reported with what was wrong: the issuer
//! that `sslrootcert` does not hold, or the names the certificate is valid for.

mod connector;
mod verify;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

pub use connector::MakeRustls;
pub use verify::CertProblem;
use verify::Verifier;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Where the trusted CAs come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file.
    File(PathBuf),
    /// The platform's bundle (`sslrootcert=system`).
    System,
}

/// The TLS options of one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            mode: SslMode::Prefer,
            root_cert: None,
            cert: None,
            key: None,
        }
    }
}

/// Where the platform keeps its CA bundle (the first that exists; `SSL_CERT_FILE` first).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
];

impl TlsOptions {
    /// The CA file in use: `sslrootcert`, the platform bundle for `system`, or libpq's default
    /// `~/.postgresql/root.crt` when it exists.
    pub fn root_file(&self) -> Result<Option<PathBuf>, String> {
        match &self.root_cert {
            Some(RootCert::File(p)) => Ok(Some(p.clone())),
            Some(RootCert::System) => {
                let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
                from_env
                    .into_iter()
                    .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
                    .find(|p| p.is_file())
                    .map(Some)
                    .ok_or_else(|| {
                        "sslrootcert=system: this machine has no CA bundle (set SSL_CERT_FILE, or give sslrootcert a file)".to_string()
                    })
            }
            None => Ok(std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".postgresql/root.crt"))
                .filter(|p| p.is_file())),
        }
    }

    /// How the CAs are named in messages.
    fn roots_name(&self) -> String {
        match (&self.root_cert, self.root_file()) {
            (Some(RootCert::System), Ok(Some(p))) => {
                format!("the system CA bundle ({})", p.display())
            }
            (_, Ok(Some(p))) => format!("sslrootcert {}", p.display()),
            _ => "sslrootcert".into(),
        }
    }

    /// The rustls configuration; `None` for `sslmode=disable`. Files are read here, so a
    /// missing or unreadable one is reported at start.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, String> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        match self.root_file()? {
            Some(path) => {
                let certs = read_certs(&path, "sslrootcert")?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "sslrootcert {} holds no CA certificate",
                        path.display()
                    ));
                }
            }
            None if self.mode.verifies() => {
                return Err(format!(
                    "sslmode={} needs the CA that signed the server's certificate: set sslrootcert=FILE (PEM), or sslrootcert=system for the platform's CAs",
                    self.mode.as_str()
                ))
            }
            None => {}
        }
        let verifier = Verifier {
            mode: self.mode,
            inner: if self.mode.verifies() {
                Some(
                    WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots.clone()),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| format!("the CAs of {}: {e}", self.roots_name()))?,
                )
            } else {
                None
            },
            roots_name: self.roots_name(),
            provider: provider.clone(),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    format!("sslcert and sslkey do not make a client certificate: {e}")
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("sslcert and sslkey go together: give both, or neither".into()),
        };
        Ok(Some(Arc::new(config)))
    }

    /// The same settings for pgwire-replication. Its verify-full refuses an IP literal unless
    /// the name to verify is given, so the host is always given (rustls checks an IP address
    /// against the certificate's IP names, as libpq does).
    pub fn replication(&self, host: &str) -> Result<pgwire_replication::TlsConfig, String> {
        use pgwire_replication::SslMode as M;
        let mode = match self.mode {
            SslMode::Disable => M::Disable,
            SslMode::Prefer => M::Prefer,
            SslMode::Require => M::Require,
            SslMode::VerifyCa => M::VerifyCa,
            SslMode::VerifyFull => M::VerifyFull,
        };
        Ok(pgwire_replication::TlsConfig {
            mode,
            ca_pem_path: self.root_file()?,
            sni_hostname: Some(host.to_string()),
            client_cert_pem_path: self.cert.clone(),
            client_key_pem_path: self.key.clone(),
        })
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: not PEM certificates: {e}", path.display()))
}

/// What a connection failure says about TLS or channel binding: (problem, fix), or `None` when
/// it is about something else.
pub fn explain(e: &tokio_postgres::Error, mode: SslMode) -> Option<(String, String)> {
    // The whole chain: tokio-postgres keeps the cause out of its own message.
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    if text.contains("server does not support TLS") {
        return Some((
            format!(
                "the server does not offer TLS, and sslmode={} requires it",
                mode.as_str()
            ),
            "turn TLS on at the server (ssl = on, with ssl_cert_file and ssl_key_file), or set sslmode=prefer where the network is trusted".into(),
        ));
    }
    if text.contains("channel binding") {
        return Some((
            format!("SCRAM channel binding failed: {text}"),
            "channel binding needs a TLS connection (sslmode=require or stricter) and a scram-sha-256 password at the server; or set channel_binding=prefer".into(),
        ));
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(r) = as_rustls(err) {
            return Some(explain_rustls(r));
        }
        cause = err.source();
    }
    None
}

fn as_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = err.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    err.downcast_ref::<io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
}

fn explain_rustls(e: &rustls::Error) -> (String, String) {
    let problem = match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => {
            o.0.downcast_ref::<CertProblem>()
        }
        _ => None,
    };
    match problem {
        Some(p @ CertProblem::UnknownIssuer { .. }) => (
            p.to_string(),
            "give sslrootcert the CA that signed the server's certificate (on AWS RDS: the region's bundle from https://truststore.pki.rds.amazonaws.com), or fix the server's certificate".into(),
        ),
        Some(p @ CertProblem::WrongName { .. }) => (
            p.to_string(),
            "connect with a host name the certificate names, or use sslmode=verify-ca (checks the CA, not the name)".into(),
        ),
        None => match e {
            rustls::Error::InvalidCertificate(c) => (
                format!("the server's certificate was refused ({c:?})"),
                "check the server's certificate (validity dates, key usage) and sslrootcert".into(),
            ),
            // Alerts a server sends about the client's certificate (absent, from a CA it does
            // not trust, expired, or not for this use).
            rustls::Error::AlertReceived(
                a @ (AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRequired
                | AlertDescription::UnsupportedCertificate),
            ) => (
                format!("the server refused the client certificate ({a:?})"),
                "give sslcert and sslkey a client certificate for this user signed by a CA in the server's ssl_ca_file (and not expired)".into(),
            ),
            rustls::Error::AlertReceived(a) => (
                format!("the server ended the TLS handshake ({a:?})"),
                "if the server asks for a client certificate, give sslcert and sslkey; otherwise check its TLS settings".into(),
            ),
            other => (
                format!("TLS failed: {other}"),
                "check sslmode, sslrootcert, sslcert and sslkey against the server's TLS settings".into(),
            ),
        },
    }
}
