//! `edgeloop demo`: a collector with its embedded broker and a fleet of simulated gateways, all in
//! one process, storage in a temporary directory. It shows the whole path working — readings
//! produced, accepted into each gateway's durable buffer, acknowledged by the collector once
//! stored — and, on exit, that every reading produced was stored exactly once.
//!
//! The fleet: `--gateways` simulated machines, plus one gateway whose sensors publish over MQTT
//! (simulated zigbee2mqtt-style devices into the gateway's embedded broker) and one whose sensor
//! node talks over a real pseudo-terminal (the shared serial frame), so both real source paths
//! are visible.
//!
//! One gateway reaches the collector through a relay that the demo cuts for a while
//! (`--outage`): its backlog grows in its durable buffer, then drains when the link returns, and
//! its stored count catches up exactly.
//!
//! # Layout
//! - [`DemoOptions`] and [`run`]: the fleet, the periodic report and the orderly shutdown.
//! - [`link`]: the TCP relay that simulates the outage.
//! - `mqtt_devices` / `serial_node`: the simulated devices behind the MQTT and serial gateways.

pub mod bearing;
pub mod link;

use std::{collections::BTreeMap, io::Write, time::Duration};

use edgeloop_agent::config::{AgentConfig, AgentSection, BufferConfig, SimulatedConfig, SourceConfig, UplinkConfig};
use edgeloop_collector::api::Role;
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
    /// Cut gateway-1's uplink at the first time for the second (`None`: no outage).
    pub outage: Option<(Duration, Duration)>,
    /// Where the dashboard and the HTTP API listen (port 0: any free port).
    pub api_listen: std::net::SocketAddr,
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
            alerts_measurement: "alerts".into(),
            timeout: HumanDuration(Duration::from_secs(10)),
            gzip: false,
        }),
        None => StoreConfig::Local(LocalStoreConfig { path: dir.path().join("collector-store") }),
    };
    let collector_cfg = CollectorConfig {
        broker: BrokerConfig::Embedded(EmbeddedBroker { listen: ([127, 0, 0, 1], 0).into(), ..Default::default() }),
        ingest: Default::default(),
        store,
        fleet: Default::default(),
        api: Some(edgeloop_collector::config::ApiConfig {
            listen: opts.api_listen,
            tokens_file: Some(dir.path().join("tokens.json")),
        }),
        automation: Some(automation_config(dir.path(), opts.api_listen)?),
        notify: Default::default(),
    };
    // Tokens for the dashboard: shown once, stored hashed.
    let tokens_file = dir.path().join("tokens.json");
    let viewer = edgeloop_collector::api::auth::add_to_file(&tokens_file, "demo-viewer", Role::Viewer)?;
    let admin = edgeloop_collector::api::auth::add_to_file(&tokens_file, "demo-admin", Role::Admin)?;
    let collector_stop = CancellationToken::new();
    let collector = match edgeloop_collector::start(&collector_cfg, collector_stop.clone()).await {
        Ok(c) => c,
        Err(e @ edgeloop_collector::StartError::Api { .. }) => {
            anyhow::bail!("{e} (choose another address with --api-listen)")
        }
        Err(e) => return Err(e.into()),
    };
    let broker = collector.broker_addr().ok_or_else(|| anyhow::anyhow!("the demo needs the embedded broker"))?;
    let store_name = match &opts.influx_url {
        Some(url) => format!("InfluxDB {url} database {}", opts.influx_db),
        None => format!("embedded store in {}", dir.path().join("collector-store").display()),
    };
    writeln!(out, "edgeloop demo: collector broker on {broker}, {store_name}")?;
    if let Some(addr) = collector.api_addr() {
        writeln!(out, "dashboard: http://{addr}/  (log in with a token)")?;
        writeln!(out, "  viewer token: {viewer}")?;
        writeln!(out, "  admin token:  {admin}  (may acknowledge alerts and command machines)")?;
    }
    writeln!(
        out,
        "{} simulated machines, a gateway with MQTT sensors, a gateway with a serial node on a pty; one reading per sensor every {:?}; Ctrl-C stops\n",
        opts.gateways, opts.period
    )?;

    let agent_stop = CancellationToken::new();
    let mut agents = Vec::new();
    let mut outage_link = None;
    for i in 1..=opts.gateways {
        let id = format!("gateway-{i}");
        // gateway-1 goes through a relay the demo can cut.
        let uplink_to = if i == 1 && opts.outage.is_some() {
            let (link, addr) = link::Link::start(broker).await?;
            outage_link = Some(link);
            addr
        } else {
            broker
        };
        let config = AgentConfig {
            agent: AgentSection {
                id: id.clone(),
                data_dir: dir.path().join(&id),
                rules: None,
                rules_check_interval: HumanDuration(Duration::from_secs(1)),
                record: None,
                record_max: edgeloop_shared::units::ByteSize(64 << 20),
                tags: [("site".to_string(), "demo-plant".to_string())].into(),
            },
            uplink: UplinkConfig {
                host: uplink_to.ip().to_string(),
                port: uplink_to.port(),
                reconnect_max: HumanDuration(Duration::from_secs(1)),
                ..Default::default()
            },
            buffer: BufferConfig::default(),
            metrics: None,
            commands: Default::default(),
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

    // A gateway with MQTT sensors: simulated zigbee2mqtt-style devices publishing JSON.
    let mqtt_id = "gateway-mqtt".to_string();
    let mqtt_cfg = gateway_config(
        &mqtt_id,
        dir.path(),
        broker,
        &format!(
            "[sources.sensors]\nkind = \"mqtt\"\nlisten = \"127.0.0.1:0\"\nperiod = \"{}ms\"\n\
             [sources.sensors.topics.zigbee]\nfilter = \"zigbee2mqtt/{{device}}\"\nsensor = \"{{device}}\"\nformat = \"json\"\n\
             fields = {{ temperature = \"temperature\", humidity = \"humidity\" }}\n",
            opts.period.as_millis().max(1) * 5
        ),
    )?;
    let mqtt_agent = edgeloop_agent::start(&mqtt_cfg, agent_stop.child_token()).await?;
    let sensor_broker = mqtt_agent.sensor_broker("sensors").ok_or_else(|| anyhow::anyhow!("no sensor broker"))?;
    let devices_stop = CancellationToken::new();
    tokio::spawn(mqtt_devices(sensor_broker, opts.period * 5, devices_stop.clone()));
    agents.push((mqtt_id, mqtt_agent));

    // A gateway with a serial sensor node on a real pseudo-terminal.
    let pty = SerialLine::open()?;
    let serial_id = "gateway-serial".to_string();
    let rules = serial_rules();
    let serial_cfg = gateway_config_with_rules(
        &serial_id,
        dir.path(),
        broker,
        &format!(
            "[sources.node]\nkind = \"serial\"\npath = \"{}\"\nbaud = 921600\nprefix = \"press-9\"\n\
             channels = {{ 0 = \"temperature\", 1 = \"vibration\" }}\nperiod = \"{}ms\"\n",
            pty.path.display(),
            opts.period.as_millis().max(1)
        ),
        Some(&rules),
    )?;
    let serial_agent = edgeloop_agent::start(&serial_cfg, agent_stop.child_token()).await?;
    let (notes_tx, notes) = std::sync::mpsc::channel();
    let node = std::thread::spawn({
        let stop = devices_stop.clone();
        let period = opts.period;
        move || serial_node(pty, period, stop, notes_tx)
    });
    agents.push((serial_id, serial_agent));

    // A gateway watching press-3's drive-end bearing, whose defect grows over (accelerated) days.
    let press_id = "gateway-press".to_string();
    let press_cfg = gateway_config_with_rules(
        &press_id,
        dir.path(),
        broker,
        "[sources.vibration]\nkind = \"mqtt\"\nlisten = \"127.0.0.1:0\"\nperiod = \"100ms\"\n\
         [sources.vibration.topics.ve]\nfilter = \"machines/{machine}/de/vel_rms\"\nsensor = \"{machine}.de.vel_rms\"\n",
        Some(bearing::LOCAL_RULES),
    )?;
    let press_agent = edgeloop_agent::start(&press_cfg, agent_stop.child_token()).await?;
    let press_broker =
        press_agent.sensor_broker("vibration").ok_or_else(|| anyhow::anyhow!("no sensor broker for the press"))?;
    tokio::spawn(bearing::run(press_broker, devices_stop.clone()));
    agents.push((press_id, press_agent));
    writeln!(
        out,
        ">>> press-3: its drive-end bearing develops a fault, {:.0}× faster than life (1 s of demo = {:.0} h); \
         watch for the predictive alert before the gateway trips it\n",
        bearing::SPEEDUP,
        bearing::SPEEDUP / 3600.0
    )?;
    let mut alerts_seen = std::collections::BTreeMap::new();

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
            _ = tick.tick() => {
                report(out, started.elapsed(), &agents, &collector)?;
                for (id, a) in &agents {
                    for rule in a.latched() {
                        writeln!(out, "          {id}: rule {rule} is LATCHED (tripped until reset)")?;
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                while let Ok(note) = notes.try_recv() {
                    writeln!(out, "\n{note}\n")?;
                }
                print_alerts(out, &collector, &mut alerts_seen)?;
                if let (Some(link), Some((from, length))) = (&outage_link, opts.outage) {
                    let t = started.elapsed();
                    if link.is_up() && t >= from && t < from + length {
                        link.cut();
                        writeln!(out, "\n>>> gateway-1: uplink cut for {length:?} (simulated outage); its readings pile up in its buffer\n")?;
                    } else if !link.is_up() && t >= from + length {
                        link.restore();
                        writeln!(out, "\n>>> gateway-1: uplink restored; events first, live data next, then the backlog drains\n")?;
                    }
                }
            }
            _ = done => break,
            _ = shutdown.cancelled() => break,
        }
    }

    // Orderly stop: sources first, then let every backlog drain so the totals can be compared.
    writeln!(out, "\nstopping: sources off, draining the gateways' buffers...")?;
    if let Some(link) = &outage_link {
        link.restore();
    }
    for (_, a) in &agents {
        a.stop_sources();
    }
    devices_stop.cancel();
    let _ = node.join();
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

fn automation_config(
    dir: &std::path::Path,
    api: std::net::SocketAddr,
) -> anyhow::Result<edgeloop_collector::config::AutomationConfig> {
    let rules = dir.join("fleet-rules.toml");
    std::fs::write(&rules, bearing::fleet_rules())?;
    let key = dir.join("command.key");
    edgeloop_collector::automation::commands::generate_key(&key)?;
    let d = |s| HumanDuration(Duration::from_secs(s));
    Ok(edgeloop_collector::config::AutomationConfig {
        rules,
        state_dir: dir.join("automation"),
        // Alerts link to the dashboard when its address is known in advance.
        dashboard_url: (api.port() != 0).then(|| format!("http://{api}")),
        signing_key: Some(key),
        command_ttl: d(300),
        rules_check_interval: d(2),
        flap_threshold: 6,
        flap_window: d(1800),
        resolved_retention: d(3600),
        max_silence: d(7 * 24 * 3600),
    })
}

/// Prints each alert when it appears or changes state; predictions also in the machine's time.
fn print_alerts(
    out: &mut (dyn Write + Send),
    collector: &edgeloop_collector::Collector,
    seen: &mut BTreeMap<String, String>,
) -> std::io::Result<()> {
    let Some(automation) = &collector.automation else { return Ok(()) };
    for view in automation.alerts() {
        let a = &view.alert;
        let mut state = a.state.name().to_owned();
        if view.inhibited {
            state.push_str(", inhibited");
        }
        if seen.get(&a.fingerprint) == Some(&state) {
            continue;
        }
        seen.insert(a.fingerprint.clone(), state.clone());
        writeln!(out, "\n!!! ALERT [{state}] {} ({:?}): {}", a.rule, a.severity, a.summary)?;
        if let Some(p) = &a.prediction
            && a.labels.get("machine").is_some_and(|m| m == "press-3")
        {
            let h = |ns: i64| (ns - p.from_ns).max(0) as f64 / 1e9 * bearing::SPEEDUP / 3600.0;
            writeln!(
                out,
                "    in the machine's time: zone D ({} mm/s) in about {:.0} h ({:.0}–{:.0} h); now {:.2} mm/s, rising {:.3} mm/s per hour\n",
                p.limit,
                h(p.eta_ns),
                h(p.low_ns),
                h(p.high_ns),
                p.value_now,
                p.rate_per_hour / bearing::SPEEDUP
            )?;
        }
    }
    Ok(())
}

fn gateway_config(
    id: &str,
    dir: &std::path::Path,
    broker: std::net::SocketAddr,
    sources: &str,
) -> anyhow::Result<AgentConfig> {
    gateway_config_with_rules(id, dir, broker, sources, None)
}

fn gateway_config_with_rules(
    id: &str,
    dir: &std::path::Path,
    broker: std::net::SocketAddr,
    sources: &str,
    rules: Option<&str>,
) -> anyhow::Result<AgentConfig> {
    let rules_line = match rules {
        Some(text) => {
            let path = dir.join(format!("{id}-rules.toml"));
            std::fs::write(&path, text)?;
            format!("rules = \"{}\"\n", path.display())
        }
        None => String::new(),
    };
    let text = format!(
        "[agent]\nid = \"{id}\"\ndata_dir = \"{}\"\n{rules_line}[uplink]\nhost = \"{}\"\nport = {}\n{sources}",
        dir.join(id).display(),
        broker.ip(),
        broker.port()
    );
    Ok(AgentConfig::parse(&text, std::path::Path::new(id))?)
}

/// Three zigbee2mqtt-style devices publishing temperature and humidity as JSON.
async fn mqtt_devices(broker: std::net::SocketAddr, period: Duration, stop: CancellationToken) {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("demo-devices", broker.ip().to_string(), broker.port()), 64);
    let poll = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let mut tick = tokio::time::interval(period);
    let mut step = 0u64;
    while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
        for (i, device) in ["fridge-1", "oven-2", "dryer-3"].iter().enumerate() {
            let t = 20.0 + 10.0 * i as f64 + (step as f64 / 20.0).sin();
            let payload =
                format!(r#"{{"temperature":{t:.2},"humidity":{},"linkquality":120}}"#, 40 + (step + i as u64) % 20);
            if client.publish(format!("zigbee2mqtt/{device}"), QoS::AtLeastOnce, false, payload).await.is_err() {
                break;
            }
        }
        step += 1;
    }
    // Let the last messages leave before the client goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    poll.abort();
}

/// The slave side of a pty, which the serial gateway opens like a USB adapter, and its master.
struct SerialLine {
    path: std::path::PathBuf,
    master: std::fs::File,
    _slave: std::os::fd::OwnedFd,
}

impl SerialLine {
    fn open() -> anyhow::Result<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let pair = nix::pty::openpty(None, None)?;
        let mut t = tcgetattr(&pair.slave)?;
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t)?;
        let path = nix::unistd::ttyname(&pair.slave)?;
        // The node polls for commands between frames: reads must not block.
        let flags =
            nix::fcntl::OFlag::from_bits_truncate(nix::fcntl::fcntl(&pair.master, nix::fcntl::FcntlArg::F_GETFL)?);
        nix::fcntl::fcntl(&pair.master, nix::fcntl::FcntlArg::F_SETFL(flags | nix::fcntl::OFlag::O_NONBLOCK))?;
        Ok(Self { path, master: std::fs::File::from(pair.master), _slave: pair.slave })
    }
}

/// A sensor node: temperature and vibration frames every period, a heartbeat every second.
/// The overheat the demo stages: the node's temperature climbs past the rule's trip level.
const TRIP_LEVEL: f32 = 80.0;

/// The rule file of the serial gateway: an overheating spindle opens the node's relay and latches.
fn serial_rules() -> String {
    format!(
        "[rules.press-9-overtemp]\nsensor = \"press-9.temperature\"\nabove = {TRIP_LEVEL:.1}\nclear = 70.0\nseverity = \"trip\"\n\
         actions = [\"press-9-relay\"]\n\n[actions.press-9-relay]\nkind = \"serial\"\nsource = \"node\"\n"
    )
}

/// A sensor node: temperature and vibration frames every period, a heartbeat every second. Its
/// spindle warms up past the trip level; when the gateway's trip command arrives it opens its
/// relay (the machine stops and cools down) and reports how long the trip took.
fn serial_node(
    mut line: SerialLine,
    period: Duration,
    stop: CancellationToken,
    notes: std::sync::mpsc::Sender<String>,
) {
    use edgeloop_shared::frame::{FrameDecoder, GatewayMessage, MAX_WIRE_FRAME, NodeMessage, encode_to_vec};
    use std::io::{Read, Write};
    let mut seq = 0u32;
    let mut temperature = 62.0f32;
    let mut tripped = false;
    let mut decoder = FrameDecoder::<MAX_WIRE_FRAME>::new();
    let mut buf = [0u8; 256];
    while !stop.is_cancelled() {
        let t = seq as f32 * period.as_secs_f32();
        // Running: +2 °C/s; relay open: the machine stops and cools at 1 °C/s.
        temperature = if tripped {
            (temperature - period.as_secs_f32()).max(40.0)
        } else {
            temperature + 2.0 * period.as_secs_f32()
        };
        let mut bytes = Vec::new();
        for (channel, value) in [(0u16, temperature), (1, 0.3 * (t * 24.7 * std::f32::consts::TAU).sin())] {
            if let Ok(f) = encode_to_vec(&NodeMessage::Reading { channel, seq, ts_us: None, value }) {
                bytes.extend(f);
            }
        }
        if seq.is_multiple_of((1000 / period.as_millis().max(1) as u32).max(1))
            && let Ok(f) = encode_to_vec(&NodeMessage::Heartbeat { seq, uptime_ms: (t * 1000.0) as u64, tripped })
        {
            bytes.extend(f);
        }
        let sent = std::time::Instant::now();
        if line.master.write_all(&bytes).is_err() {
            return;
        }
        // Over the limit: watch the line closely for the trip command, to time it.
        let watch_until =
            sent + if !tripped && temperature > TRIP_LEVEL { Duration::from_millis(100) } else { Duration::ZERO };
        loop {
            if let Ok(n) = line.master.read(&mut buf) {
                let mut got = Vec::new();
                decoder.feed::<GatewayMessage>(&buf[..n], |r| got.extend(r.ok()));
                for cmd in got {
                    if let GatewayMessage::Trip { rule } = cmd
                        && !tripped
                    {
                        tripped = true;
                        let _ = notes.send(format!(
                            "TRIP  press-9-overtemp (#{rule}): press-9.temperature = {temperature:.2} > {TRIP_LEVEL:.1}; \
                             the node's relay opened {:.2} ms after the reading left it; latched until reset",
                            sent.elapsed().as_secs_f64() * 1e3
                        ));
                    }
                }
            }
            if tripped || std::time::Instant::now() >= watch_until {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        seq = seq.wrapping_add(1);
        std::thread::sleep(period);
    }
    // Keep the line open until the agent has read everything.
    std::thread::sleep(Duration::from_millis(300));
}

fn totals(id: &str, agent: &edgeloop_agent::Agent, collector: &edgeloop_collector::Collector) -> GatewayTotals {
    let s = agent.stats.snapshot();
    let stored = match collector.store.local() {
        Some(local) => local.count_for(id),
        None => collector.stats.agent(id).points,
    };
    GatewayTotals { produced: s.produced, accepted: s.accepted, acked: s.acked, stored }
}

fn age(ts_ns: Option<i64>) -> String {
    let Some(ts) = ts_ns else { return "-".into() };
    let now = edgeloop_shared::clock::now_ns();
    format!("{:.0}s ago", (now - ts).max(0) as f64 / 1e9)
}

fn report(
    out: &mut (dyn Write + Send),
    elapsed: Duration,
    agents: &[(String, edgeloop_agent::Agent)],
    collector: &edgeloop_collector::Collector,
) -> std::io::Result<()> {
    writeln!(
        out,
        "t={:>5.1}s  {:<14} {:>9} {:>9} {:>9} {:>8} {:>9}  uplink",
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
            "          {:<14} {:>9} {:>9} {:>9} {:>8} {:>9}  {}",
            id,
            s.produced,
            s.accepted,
            s.acked,
            s.backlog,
            t.stored,
            match (s.uplink_connected, s.catching_up) {
                (false, _) => "down".to_string(),
                (true, true) => format!("catching up (oldest unsent {})", age(a.oldest_unsent_ns())),
                (true, false) => "up".to_string(),
            }
        )?;
    }
    out.flush()
}
