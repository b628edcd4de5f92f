//! The libpq connection options tokio-postgres does not read (`sslmode`'s verify modes,
//! `sslrootcert`, `sslcert`, `sslkey`), taken out of a URL or a key=value string before
//! tokio-postgres parses the rest, with libpq's environment variables (`PGSSLMODE`,
//! `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`) where the string does not set them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::auth_probe::RequireAuth;
use super::tls::{RootCert, SslMode, TlsOptions};

/// The options read here, and the environment variable each defaults to.
const OURS: &[(&str, &str)] = &[
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("require_auth", "PGREQUIREAUTH"),
];

/// The string without our options, and our options' values.
pub fn extract(url: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let mut ours = BTreeMap::new();
    let is_ours = |k: &str| OURS.iter().any(|(o, _)| *o == k);
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let key = percent_decode(k)?;
                    if is_ours(&key) {
                        ours.insert(key, percent_decode(v)?);
                    } else {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (k, v) in key_values(url)? {
            if is_ours(&k) {
                ours.insert(k, v);
            } else {
                kept.push(format!(
                    "{k}='{}'",
                    v.replace('\\', "\\\\").replace('\'', "\\'")
                ));
            }
        }
        kept.join(" ")
    };
    Ok((rest, ours))
}

/// Our option `key`: the string's, else its environment variable's.
fn get(ours: &BTreeMap<String, String>, key: &str) -> Option<String> {
    ours.get(key).cloned().or_else(|| {
        let env = OURS.iter().find(|(k, _)| *k == key)?.1;
        std::env::var(env).ok().filter(|v| !v.is_empty())
    })
}

/// `require_auth`, if set.
pub fn require_auth(ours: &BTreeMap<String, String>) -> Result<Option<RequireAuth>, String> {
    get(ours, "require_auth")
        .map(|r| RequireAuth::parse(&r))
        .transpose()
}

/// The TLS options: the string's, else the environment's, else libpq's defaults.
pub fn tls_options(ours: &BTreeMap<String, String>) -> Result<TlsOptions, String> {
    let get = |key: &str| get(ours, key);
    let mut tls = TlsOptions::default();
    if let Some(mode) = get("sslmode") {
        tls.mode = SslMode::parse(&mode)?;
    }
    tls.root_cert = get("sslrootcert").map(|r| match r.as_str() {
        "system" => RootCert::System,
        _ => RootCert::File(PathBuf::from(r)),
    });
    tls.cert = get("sslcert").map(PathBuf::from);
    tls.key = get("sslkey").map(PathBuf::from);
    Ok(tls)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("invalid UTF-8 after percent-decoding {s:?}"))
}

/// `key=value` pairs as libpq reads them: values optionally in single quotes, `\` escaping.
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after \"{key}\""));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of \"{key}\"")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_our_options_out_of_a_url() {
        let (rest, ours) = extract(
            "postgres://u:p%40ss@db:5432/x?sslmode=verify-full&sslrootcert=%2Fca.pem&application_name=a",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%40ss@db:5432/x?application_name=a");
        assert_eq!(ours["sslmode"], "verify-full");
        assert_eq!(ours["sslrootcert"], "/ca.pem");
    }

    #[test]
    fn takes_our_options_out_of_key_values() {
        let (rest, ours) =
            extract("host=db user=u password='a\\'b c' sslrootcert = '/a b.pem' dbname=x").unwrap();
        assert_eq!(rest, "host='db' user='u' password='a\\'b c' dbname='x'");
        assert_eq!(ours["sslrootcert"], "/a b.pem");
    }
}
