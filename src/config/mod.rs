//! One configuration for every role: each option is a flag (`--source-url`), an environment
//! variable (`TOTES_CDC_SOURCE_URL`) or a key of the TOML file given by `--config`
//! (`source-url = "..."`). Flags win over the environment, the environment over the file.

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

mod args;
mod values;

pub use args::*;
pub use values::{parse_bytes, parse_duration, parse_lsn};

#[derive(Debug, Parser)]
#[command(
    name = "totes-cdc",
    version,
    about = "Change-data capture from PostgreSQL into a Parquet lake and a star-schema warehouse"
)]
pub struct Cli {
    /// A TOML file with options (keys are the long flag names: `source-url = "..."`).
    #[arg(long, global = true, env = "TOTES_CDC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log filter (error, warn, info, debug, or a tracing filter such as `totes_cdc=debug`).
    #[arg(long, global = true, env = "TOTES_CDC_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(
        long,
        global = true,
        env = "TOTES_CDC_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check and prepare the source: wal_level, privileges, replica identity, the publication.
    Setup(SetupArgs),
    /// Capture changes and publish them to a sink.
    Stream(StreamArgs),
    /// The embedded pipeline: capture and apply in one process.
    Run(RunArgs),
    /// Slot, positions, lag and dead letters.
    Status(StatusArgs),
    /// Compare the warehouse with the source; exit 1 on any difference.
    Verify(VerifyArgs),
    /// Write a totesys-like workload into the source (and, with --init, create and seed it).
    Generate(GenerateArgs),
    /// Read the Kinesis stream and apply it (one of several replicas sharing the shards).
    Consume(ConsumeArgs),
    /// Recover from an invalidated slot: drop it so the next start copies everything again.
    Resync(ResyncArgs),
    /// Apply the lake's history again from a stored LSN: rebuild or repair the warehouse.
    Replay(ReplayArgs),
}

/// Where `--config` points, looked up before the full parse so the file can supply defaults.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("TOTES_CDC_CONFIG").map(PathBuf::from)
}

fn scalar(v: &toml::Value) -> Result<String, ()> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        _ => return Err(()),
    })
}

/// Reads the config file into `key → value text` (arrays joined with commas).
fn read_file(path: &PathBuf) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    // The message without the quoted line: the line may hold a URL with its password.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map_or(0, |s| {
            text[..s.start.min(text.len())].lines().count().max(1)
        });
        format!(
            "config file {} is not valid TOML at line {line}: {}",
            path.display(),
            e.message()
        )
    })?;
    let mut out = BTreeMap::new();
    for (k, v) in table {
        let s = match &v {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Result<Vec<_>, ()>>()
                .map(|v| v.join(",")),
            other => scalar(other),
        }
        .map_err(|()| {
            format!(
                "config file {}: key '{k}' must be a string, number, boolean or list",
                path.display()
            )
        })?;
        out.insert(k, s);
    }
    Ok(out)
}

/// Parses the command line with the environment and the config file behind it.
/// Every environment variable an option of some role reads (`TOTES_CDC_*`), for checking
/// deployment manifests against the binary.
pub fn env_names() -> std::collections::BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(&Cli::command(), &mut out);
    out
}

pub fn parse_from(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let mut cmd = Cli::command();
    if let Some(path) = config_path(&args) {
        let file = read_file(&path)
            .map_err(|m| Cli::command().error(clap::error::ErrorKind::InvalidValue, m))?;
        let mut known = std::collections::BTreeSet::new();
        for arg in cmd.get_arguments() {
            if let Some(l) = arg.get_long() {
                known.insert(l.to_string());
            }
        }
        let subs: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for sub in subs {
            let file = file.clone();
            let mut seen = Vec::new();
            cmd = cmd.mut_subcommand(&sub, |mut s| {
                let ids: Vec<(String, String)> = s
                    .get_arguments()
                    .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_string())))
                    .collect();
                for (id, long) in ids {
                    if let Some(v) = file.get(&long) {
                        let v = v.clone();
                        s = s.mut_arg(id, |a| a.default_value(v));
                        seen.push(long);
                    }
                }
                s
            });
            known.extend(seen);
        }
        if let Some(unknown) = file.keys().find(|k| !known.contains(*k) && *k != "config") {
            return Err(Cli::command().error(
                clap::error::ErrorKind::UnknownArgument,
                format!(
                    "config file {}: unknown key '{unknown}' (keys are the long option names, such as source-url)",
                    path.display()
                ),
            ));
        }
    }
    let matches: ArgMatches = cmd.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn flags_beat_file() {
        let dir = std::env::temp_dir().join(format!("totes-cdc-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "source-url = \"postgres://file@h/db\"\nslot = \"from_file\"\ntables = [\"a\", \"public.b\"]\n",
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut v: Vec<OsString> = vec!["totes-cdc".into(), "stream".into()];
            v.push("--config".into());
            v.push(file.clone().into());
            v.extend(extra.iter().map(OsString::from));
            v
        };
        let Command::Stream(s) = parse_from(args(&[])).unwrap().command else {
            panic!()
        };
        assert_eq!(s.source.slot, "from_file");
        assert_eq!(s.source.tables().unwrap().len(), 2);
        let Command::Stream(s) = parse_from(args(&["--slot", "from_flag"])).unwrap().command else {
            panic!()
        };
        assert_eq!(s.source.slot, "from_flag");
        std::fs::write(&file, "slott = \"x\"\n").unwrap();
        let e = parse_from(args(&[])).unwrap_err().to_string();
        assert!(e.contains("unknown key 'slott'"), "{e}");
    }
}
