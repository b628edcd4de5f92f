//! Before a password goes to a server over an unencrypted connection, ask how it wants it:
//! a probe opens a session as the real one would (SSLRequest under `prefer`; a TLS answer ends
//! the probe, since the session will be encrypted), sends the startup message and reads the
//! authentication request, then hangs up (the server logs nothing for a client that leaves at
//! the password prompt). Cleartext and MD5 are refused unless `require_auth` allows them, as
//! libpq's option does; tokio-postgres and pgwire-replication would otherwise answer either.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The authentication methods `require_auth` lists (libpq's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequireAuth {
    pub allowed: Vec<String>,
}

impl RequireAuth {
    /// libpq's `require_auth`: a comma list of methods, or of `!method`s to refuse.
    pub fn parse(s: &str) -> Result<Self, String> {
        const METHODS: &[&str] = &["password", "md5", "scram-sha-256", "none"];
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        let negated = items.iter().all(|i| i.starts_with('!'));
        if !negated && items.iter().any(|i| i.starts_with('!')) {
            return Err("require_auth mixes methods and !methods".into());
        }
        for i in &items {
            if !METHODS.contains(&i.trim_start_matches('!')) {
                return Err(format!(
                    "require_auth={i}: the methods are password, md5, scram-sha-256 and none"
                ));
            }
        }
        let allowed = if negated {
            METHODS
                .iter()
                .filter(|m| !items.iter().any(|i| &i[1..] == **m))
                .map(|m| m.to_string())
                .collect()
        } else {
            items.iter().map(|i| i.to_string()).collect()
        };
        Ok(Self { allowed })
    }

    fn allows(&self, method: &str) -> bool {
        self.allowed.iter().any(|a| a == method)
    }
}

/// What the probe found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The session will be encrypted, or the server asks for nothing a listener could use.
    Safe,
    /// The server asks for the password by this method, over an unencrypted connection.
    Refused(&'static str),
}

pub struct Probe<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub database: &'a str,
    pub replication: bool,
    /// Whether an SSLRequest goes first (sslmode=prefer).
    pub try_tls: bool,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub require_auth: Option<&'a RequireAuth>,
    pub timeout: Duration,
}

impl Probe<'_> {
    /// How the server wants the password. Network trouble is not this check's to report: the
    /// real connection that follows reports it.
    pub async fn run(&self) -> Verdict {
        match tokio::time::timeout(self.timeout, self.ask()).await {
            Ok(Ok(v)) => v,
            _ => Verdict::Safe,
        }
    }

    async fn ask(&self) -> std::io::Result<Verdict> {
        let mut tcp = TcpStream::connect((self.host, self.port)).await?;
        if self.try_tls {
            // SSLRequest: length 8, code 80877103.
            tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            if answer[0] == b'S' {
                // Encrypted: whatever the method, the password is not readable on the wire.
                if let (Some(tls), Ok(name)) = (
                    &self.tls,
                    rustls::pki_types::ServerName::try_from(self.host.to_string()),
                ) {
                    if let Ok(mut s) = tokio_rustls::TlsConnector::from(tls.clone())
                        .connect(name, tcp)
                        .await
                    {
                        let _ = s.shutdown().await;
                    }
                }
                return Ok(Verdict::Safe);
            }
        }
        self.startup(&mut tcp).await
    }

    async fn startup<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        s: &mut S,
    ) -> std::io::Result<Verdict> {
        let mut params = vec![("user", self.user), ("database", self.database)];
        if self.replication {
            params.push(("replication", "database"));
        }
        let mut body = BytesMut::new();
        body.put_i32(196_608); // protocol 3.0
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut msg = BytesMut::new();
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(&body);
        s.write_all(&msg).await?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await?;
        let mut rest = &head[1..];
        let len = rest.get_i32() as usize;
        if head[0] != b'R' || len < 8 {
            return Ok(Verdict::Safe); // an error: the real connection reports it
        }
        let mut code = [0u8; 4];
        s.read_exact(&mut code).await?;
        let method = match i32::from_be_bytes(code) {
            3 => "password",
            5 => "md5",
            _ => return Ok(Verdict::Safe),
        };
        if self.require_auth.is_some_and(|r| r.allows(method)) {
            return Ok(Verdict::Safe);
        }
        Ok(Verdict::Refused(method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_auth_lists() {
        let r = RequireAuth::parse("password,md5").unwrap();
        assert!(r.allows("md5") && r.allows("password") && !r.allows("none"));
        let r = RequireAuth::parse("!password").unwrap();
        assert!(r.allows("md5") && !r.allows("password"));
        assert!(RequireAuth::parse("md5,!password").is_err());
        assert!(RequireAuth::parse("kerberos").is_err());
    }
}
