//! `edgeloop-collector`: the cloud collector binary.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgeloop_collector::config::CollectorConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "edgeloop-collector", version, about = "edgeloop cloud collector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector.
    Run {
        /// Config file (see config/collector.example.toml).
        #[arg(short, long, default_value = "/etc/edgeloop/collector.toml")]
        config: PathBuf,
    },
    /// Check a config file and print every problem in it.
    Check { config: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttc=warn,rumqttd=warn".into()),
        )
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeloop-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            CollectorConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Run { config } => {
            let config = CollectorConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(run(config))
        }
    }
}

async fn run(config: CollectorConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let collector = edgeloop_collector::start(&config, shutdown.clone()).await.context("cannot start the collector")?;
    if let Some(addr) = collector.broker_addr() {
        println!("edgeloop-collector: broker listening on {addr}");
    }
    let stats = collector.stats.clone();
    let report = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            use std::sync::atomic::Ordering::Relaxed;
            tracing::info!(
                batches = stats.batches_stored.load(Relaxed),
                points = stats.points_stored.load(Relaxed),
                duplicates = stats.duplicates.load(Relaxed),
                malformed = stats.malformed.load(Relaxed),
                spoofed = stats.spoofed.load(Relaxed),
                rejected = stats.rejected.load(Relaxed),
                "status"
            );
        }
    });
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = shutdown.cancelled() => {}
    }
    collector.shutdown();
    collector.wait().await;
    report.abort();
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
