//! The cross-built gateway agent (aarch64, static musl) running under qemu-user against a
//! collector on this host over TLS, with per-agent credentials: it connects, forwards, and its
//! readings are counted in a real InfluxDB.
//!
//! Ignored in a plain `cargo test`: it needs the ARM binary, which `scripts/test` builds with
//! `scripts/cross-build` and passes in `EDGELOOP_GATEWAY_AGENT`, then runs this test with
//! `--ignored`. Without that variable the test fails rather than pass vacuously.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use edgeloop_collector::config::BrokerConfig;
use tokio_util::sync::CancellationToken;

use crate::harness::{self, influxdb::Influx1, tls::TestPki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cross-built agent: scripts/test runs it with EDGELOOP_GATEWAY_AGENT set"]
async fn the_aarch64_agent_under_qemu_forwards_over_tls_into_influxdb() {
    harness::init_tracing();
    let bin = std::env::var("EDGELOOP_GATEWAY_AGENT")
        .expect("EDGELOOP_GATEWAY_AGENT must name the cross-built agent (scripts/cross-build makes it)");
    let qemu = std::env::var("EDGELOOP_GATEWAY_QEMU").unwrap_or_else(|_| "qemu-aarch64".into());
    let influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path());
    let mut config =
        harness::collector_config(([127, 0, 0, 1], 0).into(), crate::harness::influxdb::v1_store(&influx.url));
    let BrokerConfig::Embedded(broker) = &mut config.broker else { unreachable!() };
    broker.tls = Some(edgeloop_shared::broker::BrokerTls { cert: pki.cert.clone(), key: pki.key.clone() });
    broker.users = [("gw-arm".to_string(), "arm-secret".into())].into();
    let stop = CancellationToken::new();
    let collector = edgeloop_collector::start(&config, stop.clone()).await.unwrap();
    let port = collector.broker_addr().unwrap().port();

    let total = 3_000;
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "[agent]\nid = \"gw-arm\"\ndata_dir = \"{}\"\ntags = {{ site = \"arm-lab\" }}\n\n\
             [uplink]\nhost = \"localhost\"\nport = {port}\nusername = \"gw-arm\"\npassword = \"arm-secret\"\n\
             tls = {{ ca = \"{}\" }}\n\n\
             [sources.press]\nkind = \"simulated\"\nperiod = \"2ms\"\nrealtime = true\nlimit = {total}\n",
            dir.path().join("data").display(),
            pki.ca.display()
        ),
    )
    .unwrap();
    let mut agent = Command::new(&qemu)
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&agent_config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {qemu} {bin}: {e}"));
    let stored = harness::wait_for("the ARM agent's readings in InfluxDB", Duration::from_secs(120), || async {
        let n = influx.count("edgeloop", "readings", "value").await;
        (n >= total).then_some(n)
    })
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(stored, total);
    let per_agent = influx.query("edgeloop", "SELECT count(value) FROM readings GROUP BY agent, site").await;
    assert_eq!(per_agent["results"][0]["series"][0]["tags"]["agent"], "gw-arm", "{per_agent}");
    assert_eq!(per_agent["results"][0]["series"][0]["tags"]["site"], "arm-lab", "{per_agent}");
    stop.cancel();
}
