//! Database outages of minutes: the collector keeps its MQTT connection serviced while writes
//! fail, nothing is lost or stored twice, and the backlog drains by itself once the database is
//! back (issue 21). Both kinds of outage run side by side in one test to share the wait. Also
//! the broker restarted mid-drain (the collector's embedded one, and Mosquitto in external mode),
//! and an hour's soak of random faults (`soak`, ignored: run on purpose).

use std::time::{Duration, Instant};

use edgeloop_agent::config::SimulatedConfig;
use edgeloop_shared::units::HumanDuration;
use tokio_util::sync::CancellationToken;

use crate::harness::{self, influxdb::Influx1};

/// How long the database is away.
const OUTAGE: Duration = Duration::from_secs(120);
/// Readings per agent: 1,000/s from before the outage until a few seconds after it.
const READINGS: u64 = 130_000;
/// From the database's return to every backlog empty (loose: it drains, not how fast).
const DRAIN_BOUND: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGSTOP: the database hangs, its sockets open and silent (a compaction stall).
    Hung,
    /// SIGKILL: the database is gone (an upgrade, a crash), connections refused.
    Dead,
}

/// The real collector with its embedded broker, two agents at 1,000 readings/s each, InfluxDB
/// away for two minutes: every reading each agent accepted ends up in InfluxDB exactly once, and
/// every backlog is empty within [`DRAIN_BOUND`] of the database's return. On the code before
/// issue 21 the hung database wedged the collector (nothing stored after the return).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_of_minutes_drains_by_itself() {
    harness::init_tracing();
    let (hung, dead) = tokio::join!(outage(Fault::Hung), outage(Fault::Dead));
    eprintln!("{hung}\n{dead}");
}

async fn outage(fault: Fault) -> String {
    let name = format!("{fault:?}").to_lowercase();
    let mut influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let config = harness::collector_config(([127, 0, 0, 1], 0).into(), harness::influxdb::v1_store(&influx.url));
    let stop = CancellationToken::new();
    let collector = edgeloop_collector::start(&config, stop.clone()).await.unwrap();
    let mut agents = Vec::new();
    for i in 0..2 {
        let sim =
            SimulatedConfig { period: HumanDuration(Duration::from_millis(2)), realtime: true, limit: Some(READINGS) };
        let id = format!("gw-{name}-{i}");
        let cfg = harness::agent_config(&id, &dir.path().join(&id), collector.broker_addr().unwrap(), sim);
        agents.push((id, edgeloop_agent::start(&cfg, stop.clone()).await.unwrap()));
    }
    harness::wait_for("readings flowing", Duration::from_secs(60), || async {
        (influx.count("edgeloop", "readings", "value").await >= 4_000).then_some(())
    })
    .await;

    // Counted before the fault (a frozen or dead database answers no query): the time to the
    // first stored reading is approximate, writes may land in the moment before the fault.
    let before = influx.count("edgeloop", "readings", "value").await;
    match fault {
        Fault::Hung => influx.stop(),
        Fault::Dead => influx.kill(),
    }
    tokio::time::sleep(OUTAGE).await;
    for (id, agent) in &agents {
        let s = agent.stats.snapshot();
        assert!(s.backlog > 10_000, "{name}: {id} keeps what is not stored: {s:?}");
    }
    match fault {
        Fault::Hung => influx.cont(),
        Fault::Dead => influx.restart().await,
    }
    let back = Instant::now();
    harness::wait_for(&format!("{name}: a reading stored after the return"), DRAIN_BOUND, || async {
        (influx.count("edgeloop", "readings", "value").await > before).then_some(())
    })
    .await;
    let first = back.elapsed();
    harness::wait_for(&format!("{name}: every backlog drained"), DRAIN_BOUND, || async {
        agents
            .iter()
            .all(|(_, a)| {
                let s = a.stats.snapshot();
                s.produced == READINGS && s.acked == s.accepted && s.backlog == 0
            })
            .then_some(())
    })
    .await;
    let drained = back.elapsed();

    // The collector's own count says what the database has: each batch once, however often sent.
    let accepted: u64 = agents.iter().map(|(_, a)| a.stats.snapshot().accepted).sum();
    let counted = collector.stats.points_stored.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(counted, accepted, "{name}: points_stored counts each stored reading once");
    for (id, agent) in &agents {
        let s = agent.stats.snapshot();
        let q = format!("SELECT count(\"value\") FROM \"readings\" WHERE \"agent\" = '{id}'");
        let v = influx.query("edgeloop", &q).await;
        let stored = v["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0);
        assert_eq!(stored, s.accepted, "{name}: {id} has every accepted reading stored once: {s:?}");
    }
    stop.cancel();
    for (_, a) in &agents {
        a.wait().await;
    }
    collector.wait().await;
    format!("{name}: first reading stored {first:.1?}, backlog 0 {drained:.1?} after the database returned")
}

/// SIGTERM while InfluxDB hangs and the collector's writes wait on its frozen socket (a 30 s
/// request timeout): the `edgeloop-collector` binary exits well within the default 10 s grace
/// period, by itself (its grace is set to 60 s here, so it is not the timeout that ends it), and
/// nothing it abandoned is lost: once InfluxDB is back, a new collector stores all of it. Before
/// issue 21 the collector waited for the requests to time out (22 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_collector_within_its_grace_period_while_the_database_hangs() {
    harness::init_tracing();
    let mut influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    // A 30 s request timeout: writes wait on the frozen socket that long unless abandoned.
    let spawn = collector_binary(dir.path(), port, &influx.url, "shutdown_grace = \"60s\"", "timeout = \"30s\"");
    let mut collector = spawn();
    let total = 30_000;
    let stop = CancellationToken::new();
    let sim = SimulatedConfig { period: HumanDuration(Duration::from_millis(1)), realtime: true, limit: Some(total) };
    let cfg = harness::agent_config("gw-term", &dir.path().join("agent"), ([127, 0, 0, 1], port).into(), sim);
    let agent = edgeloop_agent::start(&cfg, stop.clone()).await.unwrap();
    harness::wait_for("readings flowing", Duration::from_secs(60), || async {
        (influx.count("edgeloop", "readings", "value").await >= 2_000).then_some(())
    })
    .await;

    influx.stop();
    // Long enough for writes to hang on the frozen socket and the in-flight window to fill.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(collector.id()).unwrap());
    let asked = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = harness::wait_for("the collector to exit", Duration::from_secs(60), || {
        let status = collector.try_wait().unwrap();
        async move { status }
    })
    .await;
    let took = asked.elapsed();
    assert!(status.success(), "a clean exit: {status}");
    assert!(took < Duration::from_secs(10), "SIGTERM to exit took {took:?}");

    influx.cont();
    let mut again = spawn();
    harness::wait_for("every reading stored after the restart", Duration::from_secs(120), || async {
        let s = agent.stats.snapshot();
        (s.produced == total && s.acked == s.accepted && s.backlog == 0).then_some(())
    })
    .await;
    assert_eq!(influx.count("edgeloop", "readings", "value").await, agent.stats.snapshot().accepted);
    eprintln!("SIGTERM with the database hung: exited in {took:.1?}");
    stop.cancel();
    agent.wait().await;
    let _ = again.kill();
    let _ = again.wait();
}

/// Starts `edgeloop-collector run` with its embedded broker on `port`, storing into `influx_url`;
/// `ingest` and `store` are extra lines for those sections.
fn collector_binary(
    dir: &std::path::Path,
    port: u16,
    influx_url: &str,
    ingest: &str,
    store: &str,
) -> impl Fn() -> std::process::Child + use<> {
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{port}\"\n\n[ingest]\n{ingest}\n\n\
             [store]\nkind = \"influx_v1\"\nurl = \"{influx_url}\"\ndatabase = \"edgeloop\"\n{store}\n"
        ),
    )
    .unwrap();
    let bin = harness::binary("edgeloop-collector");
    move || {
        std::process::Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// The collector, and with it the embedded broker, killed (SIGKILL) and started again while it
/// drains the backlog of a 30 s InfluxDB outage: the agents reconnect and re-send what was not
/// acked, and InfluxDB ends with every accepted reading exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_restarted_mid_drain_loses_nothing() {
    harness::init_tracing();
    let mut influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let spawn = collector_binary(dir.path(), port, &influx.url, "", "");
    let mut collector = spawn();
    let total = 60_000;
    let stop = CancellationToken::new();
    let mut agents = Vec::new();
    for i in 0..2 {
        let sim =
            SimulatedConfig { period: HumanDuration(Duration::from_millis(2)), realtime: true, limit: Some(total) };
        let id = format!("gw-restart-{i}");
        let cfg = harness::agent_config(&id, &dir.path().join(&id), ([127, 0, 0, 1], port).into(), sim);
        agents.push(edgeloop_agent::start(&cfg, stop.clone()).await.unwrap());
    }
    harness::wait_for("readings flowing", Duration::from_secs(60), || async {
        (influx.count("edgeloop", "readings", "value").await >= 4_000).then_some(())
    })
    .await;
    influx.stop();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let acked = |agents: &[edgeloop_agent::Agent]| agents.iter().map(|a| a.stats.snapshot().acked).sum::<u64>();
    let at_return = acked(&agents);
    influx.cont();
    harness::wait_for("the drain under way", Duration::from_secs(60), || async {
        (acked(&agents) >= at_return + 5_000).then_some(())
    })
    .await;
    let snapshots = || agents.iter().map(|a| a.stats.snapshot()).collect::<Vec<_>>();
    assert!(agents.iter().any(|a| a.stats.snapshot().backlog > 2_000), "mid-drain: {:?}", snapshots());
    collector.kill().unwrap();
    collector.wait().unwrap();
    let mut again = spawn();

    let deadline = Instant::now() + Duration::from_secs(120);
    while !agents.iter().all(|a| {
        let s = a.stats.snapshot();
        s.produced == total && s.acked == s.accepted && s.backlog == 0
    }) {
        assert!(Instant::now() < deadline, "not drained through the new collector: {:?}", snapshots());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted: u64 = agents.iter().map(|a| a.stats.snapshot().accepted).sum();
    assert_eq!(influx.count("edgeloop", "readings", "value").await, accepted, "{:?}", snapshots());
    stop.cancel();
    for a in &agents {
        a.wait().await;
    }
    let _ = again.kill();
    let _ = again.wait();
}

/// The site's Mosquitto (external-broker mode) killed and started again while the collector
/// drains the backlog of a 20 s InfluxDB hang. Persistence is off, so the broker forgets the
/// collector's session and every message it held: the agents re-send their windows once they
/// are back, and InfluxDB ends with every accepted reading exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_restarted_mid_drain_loses_nothing() {
    harness::init_tracing();
    let mut mosquitto = harness::mosquitto::Mosquitto::start().await;
    let mut influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = harness::collector_config(([127, 0, 0, 1], 0).into(), harness::influxdb::v1_store(&influx.url));
    config.broker = edgeloop_collector::config::BrokerConfig::External(edgeloop_collector::config::ExternalBroker {
        host: "127.0.0.1".into(),
        port: mosquitto.port,
        username: None,
        password: None,
        protocol: Default::default(),
        shared_group: None,
    });
    let stop = CancellationToken::new();
    let collector = edgeloop_collector::start(&config, stop.clone()).await.unwrap();
    let total = 50_000;
    let mut agents = Vec::new();
    for i in 0..2 {
        let sim =
            SimulatedConfig { period: HumanDuration(Duration::from_millis(2)), realtime: true, limit: Some(total) };
        let id = format!("gw-mosquitto-{i}");
        let broker = ([127, 0, 0, 1], mosquitto.port).into();
        agents.push(
            edgeloop_agent::start(&harness::agent_config(&id, &dir.path().join(&id), broker, sim), stop.clone())
                .await
                .unwrap(),
        );
    }
    harness::wait_for("readings flowing", Duration::from_secs(60), || async {
        (influx.count("edgeloop", "readings", "value").await >= 2_000).then_some(())
    })
    .await;
    influx.stop();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let acked = |agents: &[edgeloop_agent::Agent]| agents.iter().map(|a| a.stats.snapshot().acked).sum::<u64>();
    let at_return = acked(&agents);
    influx.cont();
    harness::wait_for("the drain under way", Duration::from_secs(60), || async {
        (acked(&agents) >= at_return + 2_000).then_some(())
    })
    .await;
    let snapshots = || agents.iter().map(|a| a.stats.snapshot()).collect::<Vec<_>>();
    assert!(agents.iter().any(|a| a.stats.snapshot().backlog > 2_000), "mid-drain: {:?}", snapshots());
    mosquitto.restart().await;
    let restarted = Instant::now();

    let deadline = restarted + Duration::from_secs(90);
    while !agents.iter().all(|a| {
        let s = a.stats.snapshot();
        s.produced == total && s.acked == s.accepted && s.backlog == 0
    }) {
        assert!(Instant::now() < deadline, "not drained after the broker's restart: {:?}", snapshots());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = restarted.elapsed();
    for (i, a) in agents.iter().enumerate() {
        let s = a.stats.snapshot();
        let q = format!("SELECT count(\"value\") FROM \"readings\" WHERE \"agent\" = 'gw-mosquitto-{i}'");
        let v = influx.query("edgeloop", &q).await;
        let stored = v["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0);
        assert_eq!(stored, s.accepted, "gw-mosquitto-{i}: every accepted reading stored once: {s:?}");
    }
    eprintln!("Mosquitto restarted mid-drain: backlog 0 {drained:.1?} after the restart");
    stop.cancel();
    for a in &agents {
        a.wait().await;
    }
    collector.wait().await;
}

/// A tiny xorshift, so fault schedules differ run to run but a failure prints its seed.
struct Rng(u64);

impl Rng {
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

/// The real `edgeloop-agent` binary on `data_dir`, at 1,000 readings/s, or a single reading
/// with `limit = Some(1)` (a run that only drains); default uplink settings.
fn agent_binary(dir: &std::path::Path, id: &str, port: u16, limit: Option<u64>) -> std::process::Child {
    let config = dir.join(format!("{id}-{}.toml", limit.map_or("live", |_| "drain")));
    let limit = limit.map_or(String::new(), |n| format!("limit = {n}\n"));
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"{id}\"\ndata_dir = \"{}\"\n\n[uplink]\nport = {port}\n\n\
             [sources.machine]\nkind = \"simulated\"\nperiod = \"2ms\"\nrealtime = true\n{limit}",
            dir.join(id).display()
        ),
    )
    .unwrap();
    std::process::Command::new(harness::binary("edgeloop-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// What an agent's buffer says it accepted over its whole life (read once the agent stopped).
fn accepted_by(data_dir: &std::path::Path) -> edgeloop_agent::buffer::Totals {
    let settings = edgeloop_agent::buffer::BufferSettings {
        agent: "inspect".into(),
        tags: vec![],
        max_bytes: u64::MAX,
        when_full: edgeloop_agent::buffer::WhenFull::DropOldest,
        cache_bytes: 1 << 20,
        verify_on_open: true,
        drop_report_interval: Duration::from_secs(10),
    };
    edgeloop_agent::buffer::Buffer::open(data_dir, settings).unwrap().0.totals()
}

fn sigterm(child: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap();
}

#[derive(Debug, Clone, Copy)]
enum SoakFault {
    DatabaseKilled,
    DatabaseHung(Duration),
    CollectorKilled,
    AgentKilled(usize),
}

/// The soak (issue 21): the real collector binary (embedded broker), two real agent binaries at
/// 1,000 readings/s each, InfluxDB, and a random fault every 1–3 minutes: InfluxDB SIGKILLed and
/// restarted, InfluxDB hung (SIGSTOP) for 10–120 s, the collector or an agent SIGKILLed and
/// restarted. At the end every agent drains, and InfluxDB holds exactly what each agent's buffer
/// says it accepted (a copy would overwrite its original point, so a count above the accepted
/// one can only be a stray, and one below a loss). Reports the longest time without a new
/// stored point while the database was up.
///
/// `SOAK_DURATION` (e.g. `60m`, the default) sets its length; `SOAK_REPORT` names a file that
/// gets every fault and the result as they happen. Run:
/// `cargo test -p edgeloop-tests --release -- --ignored --nocapture outage::soak`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour by default; run on purpose"]
async fn soak() {
    use std::io::Write;
    harness::init_tracing();
    let duration = std::env::var("SOAK_DURATION")
        .ok()
        .map_or(Duration::from_secs(3600), |d| humantime::parse_duration(&d).expect("SOAK_DURATION"));
    let mut report: Box<dyn Write> = match std::env::var("SOAK_REPORT") {
        Ok(path) => Box::new(std::fs::File::create(path).unwrap()),
        Err(_) => Box::new(std::io::sink()),
    };
    let started = Instant::now();
    let mut say = |line: String| {
        let line = format!("[{:>7.1?}] {line}", started.elapsed());
        eprintln!("{line}");
        let _ = writeln!(report, "{line}");
        let _ = report.flush();
    };

    let mut influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let spawn_collector = collector_binary(dir.path(), port, &influx.url, "", "");
    let mut collector = spawn_collector();
    let ids = ["gw-soak-0", "gw-soak-1"];
    let mut agents: Vec<_> = ids.iter().map(|id| agent_binary(dir.path(), id, port, None)).collect();

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    say(format!("soak for {duration:?}, fault schedule seed {seed}"));
    let mut next_fault = Instant::now() + Duration::from_secs(rng.between(60, 180));
    // The database is "up" from the moment it answers again; the stall clock only runs then.
    let (mut stored, mut progress_at) = (0u64, Instant::now());
    let (mut longest_stall, mut stall_note) = (Duration::ZERO, String::new());
    let mut last_fault = String::from("none");
    let mut faults = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = influx.count("edgeloop", "readings", "value").await;
        if n > stored {
            (stored, progress_at) = (n, Instant::now());
        }
        let stall = progress_at.elapsed();
        if stall > longest_stall {
            longest_stall = stall;
            stall_note = format!("after {last_fault}, at {:.0?}", started.elapsed());
        }
        if Instant::now() < next_fault {
            continue;
        }
        let fault = match rng.between(0, 4) {
            0 => SoakFault::DatabaseKilled,
            1 => SoakFault::DatabaseHung(Duration::from_secs(rng.between(10, 121))),
            2 => SoakFault::CollectorKilled,
            _ => SoakFault::AgentKilled(rng.between(0, 2) as usize),
        };
        faults += 1;
        last_fault = format!("{fault:?}");
        say(format!("fault {faults}: {fault:?} ({n} stored so far)"));
        match fault {
            SoakFault::DatabaseKilled => {
                influx.kill();
                influx.restart().await;
            }
            SoakFault::DatabaseHung(d) => {
                influx.stop();
                tokio::time::sleep(d).await;
                influx.cont();
            }
            SoakFault::CollectorKilled => {
                collector.kill().unwrap();
                collector.wait().unwrap();
                collector = spawn_collector();
            }
            SoakFault::AgentKilled(i) => {
                agents[i].kill().unwrap();
                agents[i].wait().unwrap();
                agents[i] = agent_binary(dir.path(), ids[i], port, None);
            }
        }
        // The outage itself is not a stall; the time until the next stored point is.
        progress_at = progress_at.max(Instant::now());
        next_fault = Instant::now() + Duration::from_secs(rng.between(60, 180));
    }
    say(format!(
        "faults over: {faults} in {:.0?}; longest time without a stored point while the database was up: \
         {longest_stall:.1?} ({stall_note})",
        started.elapsed()
    ));

    // Stop producing, then let each agent drain in a run that takes one reading more.
    for a in &mut agents {
        sigterm(a);
    }
    let mut accepted = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        accepted.push(accepted_by(&dir.path().join(id)).accepted_readings + 1);
        agents[i] = agent_binary(dir.path(), id, port, Some(1));
    }
    let drain_started = Instant::now();
    let per_agent = |id: &str| format!("SELECT count(\"value\") FROM \"readings\" WHERE \"agent\" = '{id}'");
    for (&id, &want) in ids.iter().zip(&accepted) {
        harness::wait_for(&format!("{id}: every accepted reading stored"), Duration::from_secs(600), || async {
            let v = influx.query("edgeloop", &per_agent(id)).await;
            (v["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0) >= want).then_some(())
        })
        .await;
    }
    let drained = drain_started.elapsed();
    // Give a stray copy (if any) the time to show up as an extra point.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for a in &mut agents {
        sigterm(a);
    }
    let mut lines = Vec::new();
    for (&id, &want) in ids.iter().zip(&accepted) {
        let t = accepted_by(&dir.path().join(id));
        let v = influx.query("edgeloop", &per_agent(id)).await;
        let stored = v["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0);
        lines.push(format!("{id}: accepted {}, stored {stored}, held {}", t.accepted_readings, t.held_readings));
        assert_eq!(t.accepted_readings, want, "{id}: {t:?}");
        assert_eq!((t.dropped_readings, t.refused_readings, t.quarantined_batches), (0, 0, 0), "{id}: {t:?}");
        assert_eq!(stored, want, "{id}: accepted == stored");
    }
    say(format!("final drain {drained:.1?}; {}", lines.join("; ")));
    let _ = collector.kill();
    let _ = collector.wait();
}
