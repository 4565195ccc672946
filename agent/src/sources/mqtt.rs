//! MQTT sensors. By default the agent runs the gateway's own broker (embedded rumqttd) for the
//! sensors to publish to; it can instead subscribe to the site's broker. Either way it
//! subscribes with rumqttc to each configured filter and maps topic → sensor id and payload →
//! values.
//!
//! Filters name their wildcards (see [`TopicPattern`]): `sensors/{machine}/{sensor}` subscribes
//! to `sensors/+/+` and a message on `sensors/press-3/temp` becomes the sensor id the mapping's
//! template gives, e.g. `{machine}.{sensor}` → `press-3.temp`.

use std::{
    net::SocketAddr,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use edgeloop_shared::{backoff::Backoff, broker::EmbeddedBroker, clock::now_ns, units::ByteSize};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};

use super::{
    SourceContext,
    payload::{Extracted, PayloadMapper},
};
use crate::{
    config::{BrokerMode, MqttSourceConfig},
    pipeline::ObservationKind,
    topic_pattern::TopicPattern,
};

struct Mapping {
    name: String,
    pattern: TopicPattern,
    payload: PayloadMapper,
}

/// Starts the source's embedded broker when it has one; returns its address.
pub async fn start_broker(
    id: &str,
    cfg: &MqttSourceConfig,
) -> Result<Option<SocketAddr>, edgeloop_shared::broker::BrokerError> {
    if cfg.broker != BrokerMode::Embedded {
        return Ok(None);
    }
    let broker = EmbeddedBroker {
        listen: cfg.listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 1883))),
        // The broker refuses what is far too big; the source applies the exact limit itself so an
        // oversized message is counted instead of dropping the connection.
        max_payload: ByteSize(cfg.max_payload.0.saturating_mul(4).max(1 << 20)),
        max_connections: 1_000,
        users: Default::default(),
        // The sensor broker has no logins yet: its sensors are anonymous by design for now.
        allow_anonymous: true,
        tls: None,
    };
    let handle = edgeloop_shared::broker::start(&broker, None).await?;
    tracing::info!(source = id, addr = %handle.addr, "sensor broker listening");
    Ok(Some(handle.connect_addr))
}

/// Subscribes and maps messages until shutdown. `broker` is the embedded broker's address.
pub async fn run(ctx: SourceContext, cfg: MqttSourceConfig, agent: String, broker: Option<SocketAddr>) {
    let mappings: Vec<Mapping> = cfg
        .topics
        .iter()
        .filter_map(|(name, t)| {
            // The config was validated; a mapping that still fails is skipped loudly, not panicked on.
            match (TopicPattern::parse(&t.filter, &t.sensor), PayloadMapper::new(t)) {
                (Ok(pattern), Ok(payload)) => Some(Mapping { name: name.clone(), pattern, payload }),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(source = %ctx.id, topic = %name, error = %e, "topic mapping skipped");
                    None
                }
            }
        })
        .collect();
    let (host, port) = match broker {
        Some(addr) => (addr.ip().to_string(), addr.port()),
        None => (cfg.host.clone().unwrap_or_default(), cfg.port.unwrap_or(1883)),
    };
    let mut opts = MqttOptions::new(format!("{agent}-{}", ctx.id), host, port);
    opts.set_keep_alive(Duration::from_secs(15)).set_clean_session(true);
    // Accept big packets at the MQTT layer and enforce `max_payload` ourselves: an oversized
    // message is then one counted rejection, not a dropped connection.
    opts.set_max_packet_size(cfg.max_payload.0.saturating_mul(4).max(1 << 20) as usize, 64 << 10);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u, p.expose());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);

    let max_payload = cfg.max_payload.0 as usize;
    let mut backoff = Backoff::seeded(Duration::from_millis(100), Duration::from_secs(5));
    let mut values = Vec::new();
    let mut last_warn: Option<Instant> = None;
    let mut subscribed = 0usize;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = ctx.shutdown.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                // Up means subscribed to every mapping: before that, some messages would find no consumer.
                subscribed += 1;
                if subscribed >= mappings.len() {
                    ctx.counters.up.store(true, Relaxed);
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                subscribed = 0;
                ctx.counters.opens.fetch_add(1, Relaxed);
                for m in &mappings {
                    if client.try_subscribe(m.pattern.subscription(), QoS::AtLeastOnce).is_err() {
                        tracing::error!(source = %ctx.id, topic = %m.name, "cannot queue a subscription");
                    }
                }
                tracing::info!(source = %ctx.id, subscriptions = mappings.len(), "subscribed to sensor topics");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let received_ns = now_ns();
                let mut warn = |what: String| {
                    let now = Instant::now();
                    if last_warn.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                        last_warn = Some(now);
                        tracing::warn!(source = %ctx.id, topic = %p.topic, "{what}");
                    }
                };
                if p.payload.len() > max_payload {
                    ctx.counters.oversized.fetch_add(1, Relaxed);
                    warn(format!("payload of {} bytes over the {max_payload}-byte limit; rejected", p.payload.len()));
                    continue;
                }
                let Some((m, sensor)) = mappings.iter().find_map(|m| Some((m, m.pattern.sensor(&p.topic)?))) else {
                    ctx.counters.malformed.fetch_add(1, Relaxed);
                    warn("no topic mapping matches; message ignored".into());
                    continue;
                };
                values.clear();
                if let Err(e) = m.payload.extract(&p.payload, &mut values) {
                    ctx.counters.malformed.fetch_add(1, Relaxed);
                    warn(format!("bad payload for {sensor} (mapping {}): {e}", m.name));
                    if edgeloop_shared::id::validate(&sensor).is_ok() && !ctx.emit(sensor, ObservationKind::Error).await
                    {
                        break;
                    }
                    continue;
                }
                ctx.counters.messages.fetch_add(1, Relaxed);
                for Extracted { suffix, value, device_ts_ns } in values.drain(..) {
                    let id = match suffix {
                        Some(s) => format!("{sensor}.{s}"),
                        None => sensor.clone(),
                    };
                    if let Err(e) = edgeloop_shared::id::validate(&id) {
                        ctx.counters.malformed.fetch_add(1, Relaxed);
                        warn(format!("topic gives sensor id {id:?}, which is not valid: {e}"));
                        continue;
                    }
                    if !ctx.emit(id, ObservationKind::Value { value, device_ts_ns, received_ns }).await {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                ctx.counters.up.store(false, Relaxed);
                let delay = backoff.next_delay();
                tracing::warn!(source = %ctx.id, error = %e, retry_in = ?delay, "sensor broker connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.shutdown.cancelled() => break,
                }
            }
        }
    }
    ctx.counters.up.store(false, Relaxed);
    let _ = client.try_disconnect();
}
