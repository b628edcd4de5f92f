//! libpq's password file (`PGPASSFILE`, else `~/.pgpass`): `hostname:port:database:username:
//! password` lines, `*` matching anything, `\:` and `\\` escaping; the first matching line
//! wins. As libpq, a file others may read is ignored (with a warning).

use std::path::PathBuf;

/// The password for this connection, if the file has one.
pub fn lookup(host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let meta = std::fs::metadata(&path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the password file is readable by others and is ignored: chmod 0600 it"
            );
            return None;
        }
    }
    if !meta.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|line| {
            let f = fields(line);
            let matches = |i: usize, v: &str| f.get(i).is_some_and(|x| x == "*" || x == v);
            (f.len() >= 5
                && matches(0, host)
                && matches(1, &port)
                && matches(2, database)
                && matches(3, user))
            .then(|| f[4..].join(":"))
        })
}

/// The colon-separated fields of a line, escapes resolved.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out
                .last_mut()
                .into_iter()
                .for_each(|f| f.extend(chars.next())),
            ':' => out.push(String::new()),
            c => out.last_mut().into_iter().for_each(|f| f.push(c)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fields;

    #[test]
    fn escapes() {
        assert_eq!(
            fields(r"db\:1:5432:*:u:p\:w\\d"),
            ["db:1", "5432", "*", "u", r"p:w\d"]
        );
    }
}
