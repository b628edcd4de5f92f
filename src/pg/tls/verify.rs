//! Checking the server's certificate as `sslmode` says, and saying what was wrong with it: the
//! issuer `sslrootcert` does not hold, or the names the certificate is valid for.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::SslMode;

/// What was wrong with the server's certificate, for the message.
#[derive(Debug, thiserror::Error)]
pub enum CertProblem {
    #[error("the server's certificate (issued by {issuer}) is not signed by a CA in {roots}")]
    UnknownIssuer { issuer: String, roots: String },
    #[error("the server's certificate is for {presented}, not {expected}")]
    WrongName { expected: String, presented: String },
}

/// Checks the server's certificate as `sslmode` says: not at all for prefer and require (as
/// libpq), the chain for verify-ca, the chain and the host name for verify-full.
#[derive(Debug)]
pub(super) struct Verifier {
    pub mode: SslMode,
    pub inner: Option<Arc<WebPkiServerVerifier>>,
    pub roots_name: String,
    pub provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(e)) => {
                let problem = match e {
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. }
                        if self.mode == SslMode::VerifyCa =>
                    {
                        return Ok(ServerCertVerified::assertion());
                    }
                    CertificateError::NotValidForNameContext {
                        expected,
                        presented,
                    } => CertProblem::WrongName {
                        expected: expected.to_str().into_owned(),
                        presented: if presented.is_empty() {
                            "no host name".into()
                        } else {
                            presented
                                .iter()
                                .map(|p| readable_name(p))
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                    },
                    CertificateError::UnknownIssuer => CertProblem::UnknownIssuer {
                        issuer: issuer_of(end_entity).unwrap_or_else(|| "an unknown CA".into()),
                        roots: self.roots_name.clone(),
                    },
                    other => return Err(rustls::Error::InvalidCertificate(other)),
                };
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(problem)),
                )))
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Just enough DER to read a certificate's issuer and signature algorithm.
/// A name as webpki presents it (`DnsName("db")`, `IpAddress(V4(Ipv4Addr([10, 0, 0, 1])))`),
/// as people write it.
fn readable_name(p: &str) -> String {
    if let Some(dns) = p.strip_prefix("DnsName(\"") {
        return dns.trim_end_matches("\")").to_string();
    }
    if p.starts_with("IpAddress(V4") {
        let digits: Vec<&str> = p
            .split(|c: char| !c.is_ascii_digit())
            .filter(|d| !d.is_empty())
            .skip(1) // the 4 of V4
            .collect();
        if digits.len() == 4 {
            return digits.join(".");
        }
    }
    p.to_string()
}

/// The issuer's common name (or its whole name in hex when it has none).
fn issuer_of(cert: &[u8]) -> Option<String> {
    let issuer = der::issuer(cert)?;
    Some(der::common_name(issuer).unwrap_or_else(|| "an issuer without a common name".into()))
}

pub(super) mod der {
    /// (tag, content, rest) of the element at the start of `b`.
    fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, b) = b.split_first()?;
        let (len, b) = if first < 0x80 {
            (first as usize, b)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
            (len, &b[n..])
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }

    /// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    fn parts(cert: &[u8]) -> Option<(&[u8], &[u8])> {
        let (_, cert, _) = element(cert)?;
        let (_, tbs, rest) = element(cert)?;
        let (_, alg, _) = element(rest)?;
        Some((tbs, alg))
    }

    /// The OID of the signature algorithm.
    pub fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
        let (_, alg) = parts(cert)?;
        let (tag, oid, _) = element(alg)?;
        (tag == 0x06).then_some(oid)
    }

    /// TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, ... }
    pub fn issuer(cert: &[u8]) -> Option<&[u8]> {
        let (tbs, _) = parts(cert)?;
        let (tag, _, mut rest) = element(tbs)?;
        if tag == 0xa0 {
            rest = element(rest)?.2; // the serial number follows the version
        }
        let rest = element(rest)?.2; // signature
        let (_, issuer, _) = element(rest)?;
        Some(issuer)
    }

    /// The CN of a Name (SEQUENCE OF SET OF { type, value }).
    pub fn common_name(name: &[u8]) -> Option<String> {
        const CN: &[u8] = &[0x55, 0x04, 0x03];
        let mut rdns = name;
        while let Some((_, set, rest)) = element(rdns) {
            rdns = rest;
            let (_, atv, _) = element(set)?;
            let (_, oid, value) = element(atv)?;
            if oid == CN {
                let (_, text, _) = element(value)?;
                return Some(String::from_utf8_lossy(text).into_owned());
            }
        }
        None
    }
}
