//! The sensor node's firmware core, built for the host (`firmware/src/bin/node-sim.rs`: the same
//! node loop, drivers, sampler and interlock as the board, on simulated sensors and a simulated
//! relay), against the real agent, collector and InfluxDB 1.6:
//!
//! firmware logic → serial line (two pseudo-terminals joined like a null-modem cable) → agent
//! rules and buffer → collector → InfluxDB, and the agent's trip command back down the line opens
//! the simulated relay.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use edgeloop_agent::config::AgentConfig;
use edgeloop_collector::config::CollectorConfig;
use edgeloop_shared::frame::GatewayMessage;
use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    pty::openpty,
    sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr},
    unistd::ttyname,
};
use tokio_util::sync::CancellationToken;

use crate::harness::{self, influxdb::Influx1};

/// The simulator's binary, built once per test run in the firmware's own workspace (whose
/// `.cargo/config.toml` targets the MCU, hence the explicit host target).
fn node_sim() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let firmware = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware");
        let target = "x86_64-unknown-linux-gnu";
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&firmware).args(["build", "--features", "sim", "--bin", "node-sim", "--target", target]);
        // The variables `cargo test` sets for this package (and a CARGO_TARGET_DIR meant for the
        // root workspace) must not leak into the firmware's build.
        for (key, _) in std::env::vars() {
            if key.starts_with("CARGO_") && key != "CARGO_HOME" {
                cmd.env_remove(key);
            }
        }
        let status = cmd.status().expect("cannot run cargo build for the node simulator");
        assert!(status.success(), "building the node simulator failed");
        let path = firmware.join("target").join(target).join("debug").join("node-sim");
        assert!(path.exists(), "{} was not built", path.display());
        path
    })
    .clone()
}

/// One pseudo-terminal whose slave side a program opens by path.
struct PtyEnd {
    master: File,
    path: PathBuf,
    /// Held open so that the master never reads EIO while the program (re)opens the slave, and
    /// so that the slave's raw settings stay put.
    _slave: OwnedFd,
}

impl PtyEnd {
    fn open() -> Self {
        let pair = openpty(None, None).unwrap();
        // Raw at once: a cooked slave would echo and translate what arrives before the program
        // opens it (CRATES.md §5).
        let mut t = tcgetattr(&pair.slave).unwrap();
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t).unwrap();
        let path = ttyname(&pair.slave).unwrap();
        let flags = OFlag::from_bits_truncate(fcntl(&pair.master, FcntlArg::F_GETFL).unwrap());
        fcntl(&pair.master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
        Self { master: File::from(pair.master), path, _slave: pair.slave }
    }
}

/// Two pseudo-terminals joined like a null-modem cable: what the program on one end writes, the
/// program on the other end reads. Each end is a path the program opens itself.
struct NullModem {
    node_side: PathBuf,
    gateway_side: PathBuf,
    stop: Arc<AtomicBool>,
    pump: Option<std::thread::JoinHandle<()>>,
}

impl NullModem {
    fn new() -> Self {
        let (a, b) = (PtyEnd::open(), PtyEnd::open());
        let (node_side, gateway_side) = (a.path.clone(), b.path.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let pump = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                let moved = copy(&a.master, &b.master, &mut buf) + copy(&b.master, &a.master, &mut buf);
                if moved == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Self { node_side, gateway_side, stop, pump: Some(pump) }
    }
}

/// Moves what is waiting on one master to the other; returns how many bytes.
fn copy(mut from: &File, mut to: &File, buf: &mut [u8]) -> usize {
    let Ok(n) = from.read(buf) else { return 0 }; // WouldBlock: nothing waiting
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        match to.write(rest) {
            Ok(written) => rest = &rest[written..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("pty write failed: {e}"),
        }
    }
    n
}

impl Drop for NullModem {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
    }
}

/// The simulator as a child process, its stdout lines (the relay's state) collected as they come.
struct NodeSim {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl NodeSim {
    fn start(port: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(node_sim())
            .arg(port)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start node-sim");
        let collect = |stream: Box<dyn Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Self { child, stdout, stderr }
    }

    /// Waits for a relay line starting with `prefix`, failing with everything the simulator said.
    async fn wait_for_relay(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.stdout.lock().unwrap().iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            if tokio::time::Instant::now() >= deadline || self.child.try_wait().unwrap().is_some() {
                panic!(
                    "no `{prefix}` from node-sim within {timeout:?}; stdout: {:?}, stderr: {:?}, exit: {:?}",
                    self.stdout.lock().unwrap(),
                    self.stderr.lock().unwrap(),
                    self.child.try_wait()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NodeSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const RULES: &str = r#"
[rules.press-9-overtemp]
sensor = "press-9.temperature"
above = 40.0
severity = "trip"
actions = ["node-relay"]

[actions.node-relay]
kind = "serial"
source = "node"
"#;

/// The first number in the first row of an InfluxQL answer, 0 when there is none.
fn first_value(answer: &serde_json::Value) -> u64 {
    answer["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_node_reports_to_influxdb_and_the_agents_trip_opens_its_relay() {
    harness::init_tracing();
    let sim_binary = tokio::task::spawn_blocking(node_sim);
    let influx = Influx1::start("edgeloop").await;
    sim_binary.await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    let collector_toml = format!(
        "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n\n[store]\nkind = \"influx_v1\"\nurl = \"{}\"\ndatabase = \"edgeloop\"\n",
        influx.url
    );
    let collector = edgeloop_collector::start(
        &CollectorConfig::parse(&collector_toml, Path::new("node-sim-collector.toml")).unwrap(),
        CancellationToken::new(),
    )
    .await
    .unwrap();

    // The node: the temperature climbs 10 °C/s while the machine runs; the node's own limit
    // (80 °C) is far above the agent's rule (40 °C), so the stop must come from the agent.
    let cable = NullModem::new();
    let mut node = NodeSim::start(
        &cable.node_side,
        &[
            "--temp-start",
            "25",
            "--temp-ramp",
            "10",
            "--temp-period",
            "100ms",
            "--heartbeat-period",
            "500ms",
            // The node trips by itself if the gateway's heartbeat stops for 600 ms.
            "--heartbeat-timeout",
            "600ms",
        ],
    );
    node.wait_for_relay("relay=open cause=power-on", Duration::from_secs(20)).await;

    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, RULES).unwrap();
    // Only the thermometer's channel is named: the accelerometer's channels send window features
    // (`press-9.ch0.rms`, ...), never plain readings.
    let agent_toml = format!(
        "[agent]\nid = \"gw-node-sim\"\ndata_dir = \"{}\"\nrules = \"{}\"\n\n\
         [uplink]\nhost = \"127.0.0.1\"\nport = {}\nack_timeout = \"3s\"\n\n\
         [sources.node]\nkind = \"serial\"\npath = \"{}\"\nbaud = 115200\nprefix = \"press-9\"\n\
         channels = {{ 3 = \"temperature\" }}\nperiod = \"100ms\"\nheartbeat = \"100ms\"\nreopen_min = \"20ms\"\nreopen_max = \"200ms\"\n",
        dir.path().join("agent").display(),
        rules_path.display(),
        collector.broker_addr().unwrap().port(),
        cable.gateway_side.display()
    );
    let agent = edgeloop_agent::start(
        &AgentConfig::parse(&agent_toml, Path::new("node-sim-agent.toml")).unwrap(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    harness::wait_for("the agent to open its end of the line", Duration::from_secs(10), || async {
        agent.source("node").unwrap().snapshot().up.then_some(())
    })
    .await;

    // The node's readings and window features reach the database.
    let count = |sensor: &'static str| {
        let influx = &influx;
        async move {
            let q = format!("SELECT count(\"value\") FROM \"readings\" WHERE \"sensor\" = '{sensor}'");
            first_value(&influx.query("edgeloop", &q).await)
        }
    };
    harness::wait_for("the node's temperatures and features in InfluxDB", Duration::from_secs(30), || async {
        (count("press-9.temperature").await >= 5 && count("press-9.ch0.rms").await >= 3).then_some(())
    })
    .await;
    assert!(node.stdout.lock().unwrap().iter().all(|l| !l.starts_with("relay=closed")), "no reset, no start");

    // The gateway resets the node's power-on latch: the machine starts, and heats up.
    agent.serial("node").unwrap().send(GatewayMessage::Reset).unwrap();
    node.wait_for_relay("relay=closed", Duration::from_secs(10)).await;

    // Past 40 °C the agent's rule trips and its command opens the node's relay.
    let rule = edgeloop_agent::actions::wire_rule_id("press-9-overtemp");
    let opened = node.wait_for_relay("relay=open cause=commanded", Duration::from_secs(20)).await;
    assert_eq!(opened, format!("relay=open cause=commanded rule={rule}"));
    // Heating from 25 to 40 °C took about 1.5 s, over twice the node's heartbeat timeout: the
    // agent's heartbeat kept the machine enabled until its own rule stopped it.
    let lines = node.stdout.lock().unwrap().clone();
    let first_open_after_start =
        lines.iter().skip_while(|l| !l.starts_with("relay=closed")).find(|l| l.starts_with("relay=open"));
    assert_eq!(first_open_after_start, Some(&opened), "{lines:?}");
    assert_eq!(agent.latched(), ["press-9-overtemp"]);

    // The trip is stored with the readings that led to it.
    let trips = harness::wait_for("the trip event in InfluxDB", Duration::from_secs(20), || async {
        let q =
            "SELECT count(\"message\") FROM \"events\" WHERE \"kind\" = 'trip' AND \"subject\" = 'press-9-overtemp'";
        let n = first_value(&influx.query("edgeloop", q).await);
        (n >= 1).then_some(n)
    })
    .await;
    assert_eq!(trips, 1);
    let hottest = influx
        .query("edgeloop", "SELECT max(\"value\") FROM \"readings\" WHERE \"sensor\" = 'press-9.temperature'")
        .await;
    let hottest = hottest["results"][0]["series"][0]["values"][0][1].as_f64().unwrap();
    assert!(
        hottest > 40.0 && hottest < 80.0,
        "tripped by the agent above 40 °C, before the node's own 80 °C: {hottest}"
    );
}
