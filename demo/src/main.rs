//! `edgeloop`: the all-in-one command. `edgeloop demo` runs a collector and simulated gateways in
//! one process, with no external service.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use edgeloop::DemoOptions;
use edgeloop_shared::units::HumanDuration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "edgeloop", version, about = "edgeloop: IoT edge agent and cloud collector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A collector and simulated gateways in one process, storage in a temp dir.
    Demo {
        /// Number of simulated gateways.
        #[arg(long, default_value_t = 3)]
        gateways: usize,
        /// Time between two readings of one sensor.
        #[arg(long, default_value = "20ms")]
        period: HumanDuration,
        /// How often to print the table.
        #[arg(long, default_value = "3s")]
        report_every: HumanDuration,
        /// Stop by itself after this long (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<HumanDuration>,
        /// Store into this InfluxDB (1.x write API, e.g. http://localhost:8086) instead of the
        /// embedded store. The database must exist.
        #[arg(long)]
        influx_url: Option<String>,
        #[arg(long, default_value = "edgeloop")]
        influx_db: String,
        /// Do not cut gateway-1's uplink (by default it is down from 8 s to 20 s).
        #[arg(long)]
        no_outage: bool,
        /// Where the dashboard and the HTTP API listen (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        api_listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rumqttd=off,edgeloop_agent::rules=error,edgeloop_rules=error".into()),
        )
        .init();
    let Cli {
        command:
            Command::Demo { gateways, period, report_every, duration, influx_url, influx_db, no_outage, api_listen },
    } = Cli::parse();
    let opts = DemoOptions {
        gateways: gateways.max(1),
        period: period.0.max(Duration::from_micros(100)),
        report_every: report_every.0.max(Duration::from_millis(100)),
        duration: duration.map(|d| d.0),
        influx_url,
        influx_db,
        outage: (!no_outage).then_some((Duration::from_secs(8), Duration::from_secs(12))),
        api_listen,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgeloop: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        let mut stdout = std::io::stdout();
        edgeloop::run(opts, &mut stdout, shutdown).await
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeloop: {e:#}");
            ExitCode::FAILURE
        }
    }
}
