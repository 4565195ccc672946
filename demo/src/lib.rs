//! `edgeloop demo`: a collector with its embedded broker and a fleet of simulated gateways, all in
//! one process, storage in a temporary directory. It shows the whole path working — readings
//! produced, accepted into each gateway's durable buffer, acknowledged by the collector once
//! stored — and, on exit, that every reading produced was stored exactly once.
//!
//! # Layout
//! - [`DemoOptions`] and [`run`]: the fleet, the periodic report and the orderly shutdown.

use std::{collections::BTreeMap, io::Write, time::Duration};

use edgeloop_agent::config::{AgentConfig, AgentSection, BufferConfig, SimulatedConfig, SourceConfig, UplinkConfig};
use edgeloop_collector::config::{
    BrokerConfig, CollectorConfig, EmbeddedBroker, InfluxV1Config, LocalStoreConfig, StoreConfig,
};
use edgeloop_shared::units::HumanDuration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub gateways: usize,
    /// Time between two readings of one sensor.
    pub period: Duration,
    pub report_every: Duration,
    /// Stop by itself after this long (`None`: until Ctrl-C).
    pub duration: Option<Duration>,
    /// Store into this InfluxDB 1.x-API server instead of the embedded store.
    pub influx_url: Option<String>,
    pub influx_db: String,
}

/// What the demo saw, per gateway, when it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayTotals {
    pub produced: u64,
    pub accepted: u64,
    pub acked: u64,
    pub stored: u64,
}

/// Runs the demo until `shutdown` fires or the duration ends, reporting to `out`.
pub async fn run(
    opts: DemoOptions,
    out: &mut (dyn Write + Send),
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<GatewayTotals>> {
    let dir = tempfile::Builder::new().prefix("edgeloop-demo-").tempdir()?;
    let store = match &opts.influx_url {
        Some(url) => StoreConfig::InfluxV1(InfluxV1Config {
            url: url.clone(),
            database: opts.influx_db.clone(),
            retention_policy: None,
            username: None,
            password: None,
            measurement: "readings".into(),
            events_measurement: "events".into(),
            timeout: HumanDuration(Duration::from_secs(10)),
        }),
        None => StoreConfig::Local(LocalStoreConfig { path: dir.path().join("collector-store") }),
    };
    let collector_cfg = CollectorConfig {
        broker: BrokerConfig::Embedded(EmbeddedBroker { listen: ([127, 0, 0, 1], 0).into(), ..Default::default() }),
        ingest: Default::default(),
        store,
    };
    let collector_stop = CancellationToken::new();
    let collector = edgeloop_collector::start(&collector_cfg, collector_stop.clone()).await?;
    let broker = collector.broker_addr().ok_or_else(|| anyhow::anyhow!("the demo needs the embedded broker"))?;
    let store_name = match &opts.influx_url {
        Some(url) => format!("InfluxDB {url} database {}", opts.influx_db),
        None => format!("embedded store in {}", dir.path().join("collector-store").display()),
    };
    writeln!(out, "edgeloop demo: collector broker on {broker}, {store_name}")?;
    writeln!(
        out,
        "{} simulated gateways, one reading per sensor every {:?}; Ctrl-C stops\n",
        opts.gateways, opts.period
    )?;

    let agent_stop = CancellationToken::new();
    let mut agents = Vec::new();
    for i in 1..=opts.gateways {
        let id = format!("gateway-{i}");
        let config = AgentConfig {
            agent: AgentSection { id: id.clone(), data_dir: dir.path().join(&id) },
            uplink: UplinkConfig { host: broker.ip().to_string(), port: broker.port(), ..Default::default() },
            buffer: BufferConfig::default(),
            sources: BTreeMap::from([(
                format!("machine-{i}"),
                SourceConfig::Simulated(SimulatedConfig {
                    period: HumanDuration(opts.period),
                    realtime: true,
                    limit: None,
                }),
            )]),
        };
        agents.push((id, edgeloop_agent::start(&config, agent_stop.child_token()).await?));
    }

    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(opts.report_every);
    tick.tick().await;
    loop {
        let done = async {
            match opts.duration {
                Some(d) => tokio::time::sleep_until(started + d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => report(out, started.elapsed(), &agents, &collector)?,
            _ = done => break,
            _ = shutdown.cancelled() => break,
        }
    }

    // Orderly stop: sources first, then let every backlog drain so the totals can be compared.
    writeln!(out, "\nstopping: sources off, draining the gateways' buffers...")?;
    for (_, a) in &agents {
        a.stop_sources();
    }
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while agents
        .iter()
        .any(|(_, a)| a.stats.snapshot().backlog > 0 || a.stats.snapshot().produced != a.stats.snapshot().accepted)
        && tokio::time::Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent_stop.cancel();
    for (_, a) in &agents {
        a.wait().await;
    }
    report(out, started.elapsed(), &agents, &collector)?;
    let totals: Vec<GatewayTotals> = agents.iter().map(|(id, a)| totals(id, a, &collector)).collect();
    let produced: u64 = totals.iter().map(|t| t.produced).sum();
    let stored: u64 = totals.iter().map(|t| t.stored).sum();
    if produced == stored {
        writeln!(out, "\nall {produced} readings produced were stored exactly once")?;
    } else {
        writeln!(
            out,
            "\n{produced} readings produced, {stored} stored: {} still in the gateways' buffers",
            produced.saturating_sub(stored)
        )?;
    }
    collector.shutdown();
    collector.wait().await;
    Ok(totals)
}

fn totals(id: &str, agent: &edgeloop_agent::Agent, collector: &edgeloop_collector::Collector) -> GatewayTotals {
    let s = agent.stats.snapshot();
    let stored = match collector.store.local() {
        Some(local) => local.count_for(id),
        None => collector.stats.agent(id).points,
    };
    GatewayTotals { produced: s.produced, accepted: s.accepted, acked: s.acked, stored }
}

fn report(
    out: &mut (dyn Write + Send),
    elapsed: Duration,
    agents: &[(String, edgeloop_agent::Agent)],
    collector: &edgeloop_collector::Collector,
) -> std::io::Result<()> {
    writeln!(
        out,
        "t={:>5.1}s  {:<10} {:>9} {:>9} {:>9} {:>8} {:>9}  uplink",
        elapsed.as_secs_f64(),
        "gateway",
        "produced",
        "buffered",
        "acked",
        "backlog",
        "stored"
    )?;
    for (id, a) in agents {
        let s = a.stats.snapshot();
        let t = totals(id, a, collector);
        writeln!(
            out,
            "          {:<10} {:>9} {:>9} {:>9} {:>8} {:>9}  {}",
            id,
            s.produced,
            s.accepted,
            s.acked,
            s.backlog,
            t.stored,
            if s.uplink_connected { "up" } else { "down" }
        )?;
    }
    out.flush()
}
