//! The roles of the one binary, one module each.

pub mod consume;
pub mod generate;
pub mod progress;
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
