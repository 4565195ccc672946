//! The predictive-maintenance part of the demo: `press-3`'s drive-end bearing develops a fault
//! over (accelerated) days. Its velocity RMS comes from the collector's synthetic run-to-failure
//! set (the one the tests and BENCHMARKS.md score against), played `SPEEDUP` times faster than
//! life into the gateway's MQTT broker as a vibration transmitter would publish it. The
//! collector's predict rule fits the trend and raises the alert with its time to the ISO 10816
//! zone D limit while the machine still runs; later the gateway's local rule trips it at 7.1 mm/s.

use std::time::Duration;

use edgeloop_collector::automation::synthetic::{SyntheticConfig, SyntheticSet};
use tokio_util::sync::CancellationToken;

/// Simulated seconds per real second: 2 hours of the machine's life per second of demo.
pub const SPEEDUP: f64 = 7200.0;

/// The gateway's local safety rule: well into zone D for a group 2 machine, latched. Its action tells the press's controller (listening on the gateway's broker) to stop.
/// Eight of the last ten readings (a glitch from the transmitter must not stop a press).
pub const LOCAL_RULES: &str = "[rules.press-3-bearing-trip]\nsensor = \"press-3.de.vel_rms\"\nabove = 7.1\n\
k_of_n = [8, 10]\nseverity = \"trip\"\nactions = [\"press-3-stop\"]\n\n[actions.press-3-stop]\nkind = \"mqtt\"\nsource = \"vibration\"\n\
topic = \"machines/press-3/stop\"\npayload = \"{rule}: {sensor} = {value}\"\n";

/// The collector's fleet rules for the demo, with the predict rule's buckets scaled to demo time
/// (1 h of the machine's life = 0.5 s).
pub fn fleet_rules() -> String {
    let scaled = |hours: f64| format!("{}ms", (hours * 3600.0 / SPEEDUP * 1000.0).round() as u64);
    format!(
        r#"[defaults]
group_by = ["rule", "machine"]
group_wait = "0s"
group_interval = "10s"
repeat_interval = "1h"

[rules.gateway_offline]
kind = "agent_offline"
for = "5s"
severity = "critical"
route = {{ group_by = ["rule", "site"], group_wait = "5s" }}

[rules.machine_tripped]
kind = "trip"
severity = "critical"

[rules.bearing_zone_d]
kind = "predict"
sensors = "*.de.vel_rms"
limit = 4.5
horizon = "{horizon}"
bucket = "{bucket}"
window = "{window}"
confidence = 0.9
severity = "warning"
labels = {{ team = "maintenance" }}

[inhibit.tripped_machine]
source = {{ kind = "trip" }}
target = {{ sensor = "*.vel_rms" }}
equal = ["machine"]
"#,
        horizon = scaled(96.0),
        bucket = scaled(1.0),
        window = scaled(48.0),
    )
}

/// Publishes the bearing's velocity RMS on `machines/press-3/de/vel_rms`, starting two simulated
/// days before the defect's onset, until the gateway's stop command arrives on
/// `machines/press-3/stop` (the press stops: no more vibration), its series ends, or `stop`.
pub async fn run(broker: std::net::SocketAddr, stop: CancellationToken) {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let set = SyntheticSet::generate(SyntheticConfig::default());
    // The fastest-growing defect of the set: the whole story fits in about a minute and a half.
    let Some(machine) = set.machines.iter().filter(|m| m.faulty).min_by_key(|m| m.defect_tau_ns) else { return };
    let Some(onset) = machine.onset_ns else { return };
    let from = onset - 2 * 86_400_000_000_000;
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("press-3-vibration", broker.ip().to_string(), broker.port()), 64);
    let stopped = CancellationToken::new();
    let poll = tokio::spawn({
        let stopped = stopped.clone();
        async move {
            while let Ok(event) = events.poll().await {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event
                    && p.topic == "machines/press-3/stop"
                {
                    stopped.cancel();
                }
            }
        }
    });
    if client.subscribe("machines/press-3/stop", QoS::AtLeastOnce).await.is_err() {
        return;
    }
    let every = Duration::from_secs_f64(set.config.sample_every_ns as f64 / 1e9 / SPEEDUP);
    let mut tick = tokio::time::interval(every);
    for (ts, value) in machine.readings(&set.config).filter(|(ts, _)| *ts >= from) {
        if !value.is_finite() {
            continue;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
            _ = stopped.cancelled() => break,
        }
        let _ = ts;
        if client.publish("machines/press-3/de/vel_rms", QoS::AtLeastOnce, false, format!("{value:.3}")).await.is_err()
        {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    poll.abort();
}
