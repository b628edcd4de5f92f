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

/// Fails with the fix when the warehouse has no staging mirrors (`setup` was not run): the
/// roles that apply without a source (consume, replay) cannot create them.
pub async fn require_staging(url: &crate::pg::PgUrl) -> anyhow::Result<()> {
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
    Ok(())
}
