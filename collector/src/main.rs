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
    /// Fleet rule files (`[automation] rules`).
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// HTTP API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Make the Ed25519 key commands are signed with (`[automation] signing_key`) and print the
    /// public key for the agents' `[commands] public_key`.
    Keygen {
        /// Where to write the key (never overwritten).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Print every problem in a fleet rule file, by rule id and key.
    Check {
        file: PathBuf,
        /// The collector config: `notify` channel names are checked against its `[notify]`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replay a recording (the agent's JSON Lines format) through the rules in simulated time
    /// and print every alert change, notification and command they produce.
    Test {
        file: PathBuf,
        #[arg(long)]
        replay: PathBuf,
        /// The agent the recording is from.
        #[arg(long, default_value = "recorded")]
        agent: String,
        /// Its `site` tag.
        #[arg(long, default_value = "site")]
        site: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Add a token and print it (once: only its hash is stored).
    Add {
        /// Who or what uses it (letters, digits, '-', '_', '.').
        name: String,
        /// viewer, maintenance, engineer, operator or admin.
        #[arg(long)]
        role: edgeloop_collector::api::Role,
        /// The tokens file (`[api] tokens_file`); created when missing.
        #[arg(long)]
        tokens: PathBuf,
    },
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
            let loaded = CollectorConfig::load(&config)?;
            if let Some(addr) = loaded.open_broker() {
                anyhow::bail!("{}: {:#}", config.display(), edgeloop_collector::StartError::AnonymousBroker { addr });
            }
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Rules { command: RulesCommand::Check { file, config } } => {
            use edgeloop_collector::automation::rules::FleetRules;
            let rules = FleetRules::load(&file)?;
            let channels: Option<Vec<String>> = match &config {
                Some(c) => Some(CollectorConfig::load(c)?.notify.keys().cloned().collect()),
                None => None,
            };
            let problems = rules.problems(channels.as_deref());
            if problems.is_empty() {
                println!(
                    "{}: ok, {} rule(s), {} inhibit rule(s)",
                    file.display(),
                    rules.rules.len(),
                    rules.inhibit.len()
                );
                Ok(())
            } else {
                for p in &problems {
                    println!("{}: {p}", file.display());
                }
                anyhow::bail!("{} problem(s) in {}", problems.len(), file.display())
            }
        }
        Command::Rules { command: RulesCommand::Test { file, replay, agent, site } } => {
            use edgeloop_collector::automation::{replay::replay as run_replay, rules::FleetRules};
            use edgeloop_rules::record::{RecordedItem, read_recording};
            let rules = FleetRules::load(&file)?;
            let mut readings: Vec<edgeloop_shared::model::Reading> = read_recording(&replay)?
                .into_iter()
                .filter_map(|item| match item {
                    RecordedItem::Reading { ts_ns, sensor, value } => {
                        Some(edgeloop_shared::model::Reading { sensor, ts_ns, value })
                    }
                    _ => None,
                })
                .collect();
            readings.sort_by_key(|r| r.ts_ns);
            let start = readings.first().map_or(0, |r| r.ts_ns);
            let lines = run_replay(rules, &agent, &site, &readings)?;
            for l in &lines {
                println!("t={:>10.1}s  {}", (l.ts_ns - start) as f64 / 1e9, l.text);
            }
            println!("{} reading(s) replayed, {} line(s)", readings.len(), lines.len());
            Ok(())
        }
        Command::Token { command: TokenCommand::Add { name, role, tokens } } => {
            let token = edgeloop_collector::api::auth::add_to_file(&tokens, &name, role)?;
            eprintln!("token {name:?} ({role}) added to {}; it is shown only now:", tokens.display());
            println!("{token}");
            Ok(())
        }
        Command::Keygen { file } => {
            let key = edgeloop_collector::automation::commands::generate_key(&file)?;
            eprintln!(
                "signing key written to {}; set [automation] signing_key to it, and on every agent [commands] \
                 public_key to:",
                file.display()
            );
            println!("{}", key.public_key_hex());
            Ok(())
        }
        Command::Run { config } => {
            let config = CollectorConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let result = runtime.block_on(run(config));
            // A task still blocking (a stage past its grace period) must not keep the process.
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
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
    let grace = config.ingest.shutdown_grace.0;
    if tokio::time::timeout(grace, collector.wait()).await.is_err() {
        // Nothing un-acked is lost by leaving now: the agents and the broker still hold it.
        tracing::warn!(?grace, "stages still busy after the grace period; exiting anyway");
    }
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
