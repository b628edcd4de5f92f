//! The roles of the one binary, one module each.

pub mod consume;
pub mod generate;
pub mod progress;
pub mod replay;
pub mod resync;
pub mod run;
pub mod setup;
pub mod status;
pub mod stream;
pub mod verify;

/// Starts the metrics and health endpoints; a bad address stops the role at once.
pub async fn serve_metrics(
    addr: &str,
    health: std::sync::Arc<crate::metrics::server::Health>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on metrics-addr {addr}: {e}; choose another address (metrics-addr)"
        )
    })?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    tokio::spawn(crate::metrics::server::serve(listener, health));
    Ok(())
}

/// The warehouse of a role that applies without a source (consume, replay): checked by
/// `require_staging`, writing checkpoint `checkpoint`.
pub async fn warehouse_without_source(
    url: &crate::pg::PgUrl,
    args: &crate::config::WarehouseArgs,
    checkpoint: &str,
) -> anyhow::Result<crate::apply::warehouse::Warehouse> {
    require_staging(url).await?;
    Ok(crate::apply::warehouse::Warehouse::new(
        url.clone(),
        &args.warehouse_schema,
        args.model,
        checkpoint,
        "",
    ))
}

/// Fails with the fix when the warehouse has no staging mirrors (`setup` was not run) or a
/// schema older than this binary writes: the roles that apply without a source (consume,
/// replay) cannot create or upgrade them.
pub async fn require_staging(url: &crate::pg::PgUrl) -> anyhow::Result<()> {
    use crate::apply::warehouse::{bookkeeping, ddl};
    let control = url.connect().await?;
    let mirrors: i64 = control
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'staging' AND c.relkind = 'r'",
            &[],
        )
        .await
        .map_err(|e| url.query_error("looking for the staging mirrors", e))?
        .get(0);
    if mirrors == 0 {
        anyhow::bail!(
            "the warehouse at {} has no staging tables: run `totes-cdc setup --source-url <source> --warehouse-url <warehouse>` first",
            url.target()
        );
    }
    let version = bookkeeping::schema_version(&control)
        .await
        .map_err(|e| url.query_error("reading the schema version", e))?
        .unwrap_or(0);
    if version < ddl::SCHEMA_VERSION {
        anyhow::bail!(
            "the warehouse at {} was set up by an older totes-cdc (schema version {version}, this binary needs {}): run `totes-cdc setup --source-url <source> --warehouse-url <warehouse>` to upgrade it",
            url.target(),
            ddl::SCHEMA_VERSION
        );
    }
    Ok(())
}

/// The remedy of the first error in `e`'s chain that knows one.
fn fix_of(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|cause| {
        macro_rules! try_as {
            ($($t:ty),*) => {
                $(if let Some(x) = cause.downcast_ref::<$t>() {
                    if let Some(f) = crate::fix::Fix::fix(x) {
                        return Some(f);
                    }
                })*
            };
        }
        try_as!(
            crate::pg::PgError,
            crate::capture::CaptureError,
            crate::apply::warehouse::ApplyError,
            crate::lake::StoreError,
            crate::transport::kinesis::KinesisError,
            crate::transport::kinesis::consumer::ConsumeError
        );
        None
    })
}

/// `error` and, on the next line, its remedy, as the command line prints them.
pub fn report(e: &anyhow::Error) -> String {
    match fix_of(e) {
        Some(fix) => format!("error: {e:#}\n  fix: {fix}"),
        None => format!("error: {e:#}"),
    }
}

/// A URL option: given inline or in a file (a mounted secret), with the password from a file of
/// its own if one is given; `None` when neither is set. `what` is the option's name.
fn url_option(
    inline: &Option<String>,
    file: &Option<std::path::PathBuf>,
    password_file: &Option<std::path::PathBuf>,
    what: &'static str,
) -> anyhow::Result<Option<crate::pg::PgUrl>> {
    let read = |path: &std::path::Path, which: &str| {
        let text = std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| {
                anyhow::anyhow!(
                    "{what}: cannot read the {which} file {}: {e}",
                    path.display()
                )
            })?;
        // An empty file (a secret not filled in, or caught mid-write) must not mean the
        // defaults (localhost as the current user).
        if text.trim().is_empty() {
            anyhow::bail!(
                "{what}: the {which} file {} is empty: put the {which} in it",
                path.display()
            );
        }
        Ok::<_, anyhow::Error>(text)
    };
    let raw = match (inline, file) {
        (Some(url), _) if url.trim().is_empty() => {
            anyhow::bail!(
                "{what} is empty: give the database's URL, postgres://user@host:port/database"
            )
        }
        (Some(url), _) => url.clone(),
        (None, Some(path)) => read(path, "URL")?,
        (None, None) => return Ok(None),
    };
    let url = crate::pg::PgUrl::parse(&raw, what)?;
    Ok(Some(match password_file {
        Some(path) => url.with_password(&read(path, "password")?),
        None => url,
    }))
}

/// The error of a URL option the command cannot do without.
fn missing_url(what: &str, command: &str) -> anyhow::Error {
    let env = format!("TOTES_CDC_{}", what.to_uppercase().replace('-', "_"));
    anyhow::anyhow!(
        "{command} needs {what} (flag --{what} or --{what}-file, env {env} or {env}_FILE, or `{what}` in the config file)"
    )
}

/// The source URL, which `command` needs.
pub fn source_url(
    args: &crate::config::SourceUrlArgs,
    command: &str,
) -> anyhow::Result<crate::pg::PgUrl> {
    url_option(
        &args.source_url,
        &args.source_url_file,
        &args.source_password_file,
        "source-url",
    )?
    .ok_or_else(|| missing_url("source-url", command))
}

/// The warehouse URL, if given.
pub fn warehouse_url_option(
    args: &crate::config::WarehouseUrlArgs,
) -> anyhow::Result<Option<crate::pg::PgUrl>> {
    url_option(
        &args.warehouse_url,
        &args.warehouse_url_file,
        &args.warehouse_password_file,
        "warehouse-url",
    )
}
