//! `edgeloop-agent`: the gateway agent binary.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

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
    /// Replay a recording through a rule file: print when each rule would have tripped and
    /// cleared, and check expected trips. Exit 0: met; 1: a mismatch; 2: an unreadable input.
    Test {
        /// The rule file to test.
        file: PathBuf,
        /// The recording: JSON Lines of readings and stale/recovered events
        /// (see config/recording.example.jsonl).
        #[arg(long, value_name = "RECORDING")]
        replay: PathBuf,
        /// Expected trips, clears and alarms (TOML; see config/rules.example.expect.toml).
        #[arg(long, value_name = "EXPECT")]
        expect: Option<PathBuf>,
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeloop-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `rules test`: prints the replay's transitions; `Ok(false)` when expectations are not met.
fn rules_test(file: &Path, recording: &Path, expect: Option<&Path>, config: Option<&Path>) -> anyhow::Result<bool> {
    use edgeloop_rules::{config::RuleFile, record, replay};

    let ctx = match config {
        Some(c) => AgentConfig::load(c)?.rules_context(),
        None => Default::default(),
    };
    let rules = RuleFile::load(file, &ctx)?;
    let records = record::read_recording(recording)?;
    anyhow::ensure!(!records.is_empty(), "recording {} holds no records", recording.display());
    let expectations = expect.map(|e| replay::Expectations::load(e, &rules)).transpose()?;
    let first = records.first().map_or(0, |r| r.ts_ns());
    let last = records.iter().map(|r| r.ts_ns()).max().unwrap_or(first);
    let count = records.len();
    let transitions = replay::replay(&rules, records.into_iter());
    if transitions.is_empty() {
        println!("no rule tripped, cleared or alarmed");
    } else {
        print!("{}", replay::table(&transitions));
    }
    println!(
        "{} transition(s) from {count} record(s) of {} over {}",
        transitions.len(),
        recording.display(),
        replay::format_offset(last.saturating_sub(first)),
    );
    let Some(expectations) = expectations else { return Ok(true) };
    let report = expectations.check(&transitions, first);
    let unchecked = match report.unchecked {
        0 => String::new(),
        n => format!(" ({n} transition(s) of rules the expectations do not name were not checked)"),
    };
    if report.passed() {
        println!("ok: {} expectations met{unchecked}", report.met);
        return Ok(true);
    }
    println!(
        "FAILED: {} mismatch(es); {} of {} expectations met{unchecked}",
        report.mismatches.len(),
        report.met,
        report.expectations
    );
    for m in &report.mismatches {
        println!("  - {m}");
    }
    Ok(false)
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { config: path } => {
            let config = AgentConfig::load(&path)?;
            // The rule file is part of what `run` starts with: a missing file, a rule naming an
            // undefined action or a shutdown action the file lacks fails here, not at start.
            match &config.agent.rules {
                Some(rules_path) => {
                    let rules = edgeloop_rules::config::RuleFile::load(rules_path, &config.rules_context())
                        .with_context(|| format!("{}: [agent] rules", path.display()))?;
                    println!(
                        "{}: ok; {}: {} rule(s), {} action(s)",
                        path.display(),
                        rules_path.display(),
                        rules.rules.len(),
                        rules.actions.len()
                    );
                }
                None => println!("{}: ok (no rule file)", path.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules { command: RulesCommand::Check { file, config } } => {
            let ctx = match config {
                Some(c) => AgentConfig::load(&c)?.rules_context(),
                None => Default::default(),
            };
            let rules = edgeloop_rules::config::RuleFile::load(&file, &ctx)?;
            println!("{}: ok, {} rule(s), {} action(s)", file.display(), rules.rules.len(), rules.actions.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules { command: RulesCommand::Test { file, replay, expect, config } } => {
            Ok(match rules_test(&file, &replay, expect.as_deref(), config.as_deref()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                // Unreadable or invalid inputs: 2, so that CI tells a broken test from a failing one.
                Err(e) => {
                    eprintln!("edgeloop-agent: {e:#}");
                    ExitCode::from(2)
                }
            })
        }
        Command::Run { config } => {
            fail_stop_on_panic();
            let config = AgentConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(run(config))?;
            Ok(ExitCode::SUCCESS)
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

/// A panic is a bug: rather than let one task or thread die while the process looks healthy,
/// stop the whole agent (systemd restarts it; the buffer is built for SIGKILL, so an abort loses
/// nothing accepted). The one exception is a read of a damaged buffer file, which the buffer
/// contains and salvages.
fn fail_stop_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if !edgeloop_agent::buffer::redb::panic_is_contained() {
            eprintln!("edgeloop-agent: aborting after a panic (a bug); the service manager restarts it");
            std::process::abort();
        }
    }));
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
