use std::process::ExitCode;

use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use totes_cdc::config::{self, Command, LogFormat};

fn main() -> ExitCode {
    // One crypto provider for every TLS connection, pgwire-replication's included (it uses the
    // process default when one is installed): aws-lc-rs decrypts the replication stream's many
    // small records measurably faster than ring (BENCHMARKS.md, capture over TLS). An error
    // only means one was installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = match config::parse_from(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // pgwire-replication logs a dropped session as an error; totes-cdc reports (and retries)
    // it itself, so the library stays quiet unless asked for by name.
    let spec = if cli.log.contains("pgwire_replication") {
        cli.log.clone()
    } else {
        format!("{},pgwire_replication=off", cli.log)
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = shutdown_signal();
        match cli.command {
            Command::Setup(args) => totes_cdc::commands::setup::run(args).await,
            Command::Stream(args) => totes_cdc::commands::stream::run(args, shutdown).await,
            Command::Run(args) => totes_cdc::commands::run::run(args, shutdown).await,
            Command::Status(args) => totes_cdc::commands::status::run(args).await,
            Command::Verify(args) => totes_cdc::commands::verify::run(args).await,
            Command::Generate(args) => totes_cdc::commands::generate::run(args, shutdown).await,
            Command::Consume(args) => totes_cdc::commands::consume::run(args, shutdown).await,
            Command::Resync(args) => totes_cdc::commands::resync::run(args).await,
            Command::Replay(args) => totes_cdc::commands::replay::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", totes_cdc::commands::report(&e));
            ExitCode::FAILURE
        }
    }
}

/// A watch that turns true on SIGINT or SIGTERM.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested: draining");
        let _ = tx.send(true);
    });
    rx
}
