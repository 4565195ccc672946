//! `edgeloop-agent`: the gateway agent binary.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgeloop_agent::config::AgentConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "edgeloop-agent", version, about = "edgeloop gateway agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        /// Config file (see config/agent.example.toml).
        #[arg(short, long, default_value = "/etc/edgeloop/agent.toml")]
        config: PathBuf,
    },
    /// Check a config file and print every problem in it.
    Check { config: PathBuf },
    /// Local safety rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check a rule file and print every problem with the rule id, key and line.
    Check {
        file: PathBuf,
        /// The agent config, to also check that actions name this agent's sources.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rumqttc=warn".into()),
        )
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeloop-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            AgentConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Rules { command: RulesCommand::Check { file, config } } => {
            let ctx = match config {
                Some(c) => edgeloop_agent::rules::config::Context::of(&AgentConfig::load(&c)?),
                None => Default::default(),
            };
            let rules = edgeloop_agent::rules::config::RuleFile::load(&file, &ctx)?;
            println!("{}: ok, {} rule(s), {} action(s)", file.display(), rules.rules.len(), rules.actions.len());
            Ok(())
        }
        Command::Run { config } => {
            let config = AgentConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(run(config))
        }
    }
}

async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let agent = edgeloop_agent::start(&config, shutdown.clone()).await.context("cannot start the agent")?;
    let stats = agent.stats.clone();
    let report = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let s = stats.snapshot();
            tracing::info!(
                produced = s.produced,
                accepted = s.accepted,
                acked = s.acked,
                backlog = s.backlog,
                rejected = s.rejected,
                uplink = s.uplink_connected,
                "status"
            );
        }
    });
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = shutdown.cancelled() => {}
    }
    agent.shutdown();
    agent.wait().await;
    report.abort();
    let s = agent.stats.snapshot();
    tracing::info!(accepted = s.accepted, acked = s.acked, backlog = s.backlog, "stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
