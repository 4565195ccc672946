//! The MQTT transport of the forwarder (rumqttc, QoS 1, TCP_NODELAY).
//!
//! Two tasks: one polls rumqttc's event loop (network I/O and reconnects, with jittered backoff)
//! and reports what happened over a channel; the forwarder task owns the [`Window`] and publishes
//! with `try_publish`, so it never blocks on a full client queue and never deadlocks with the poll
//! task.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use edgeloop_shared::{
    backoff::Backoff,
    model::{Ack, AckStatus, from_wire},
    topic::{Channel, topic},
};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::window::Window;
use crate::{
    buffer::{Buffer, BufferError, Lane},
    stats::AgentStats,
};

/// Where and how the forwarder sends.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub agent: String,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
    pub in_flight: usize,
    pub ack_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

enum Uplink {
    Connected,
    Disconnected,
    Ack(Vec<u8>),
}

/// Runs the uplink until `shutdown`; batches stay in `buffer` until acknowledged.
pub async fn run(
    settings: UplinkSettings,
    buffer: Buffer,
    mut committed: watch::Receiver<u64>,
    stats: Arc<AgentStats>,
    shutdown: CancellationToken,
) -> Result<(), BufferError> {
    let telemetry_topic = topic(&settings.agent, Channel::Telemetry);
    let ack_topic = topic(&settings.agent, Channel::Ack);

    let mut opts = MqttOptions::new(settings.agent.clone(), settings.host.clone(), settings.port);
    opts.set_keep_alive(settings.keep_alive.max(Duration::from_secs(1)))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 64 << 20);
    if let (Some(user), Some(pass)) = (&settings.username, &settings.password) {
        opts.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);

    let (events_tx, mut events) = mpsc::channel::<Uplink>(256);
    let poll_shutdown = shutdown.clone();
    let agent = settings.agent.clone();
    let poll_ack_topic = ack_topic.clone();
    let mut backoff = Backoff::seeded(settings.reconnect_min, settings.reconnect_max);
    let poller = tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = poll_shutdown.cancelled() => break,
            };
            let report = match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    Uplink::Connected
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == poll_ack_topic => Uplink::Ack(p.payload.to_vec()),
                Ok(_) => continue,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(agent = %agent, error = %e, retry_in = ?delay, "uplink down");
                    if events_tx.send(Uplink::Disconnected).await.is_err() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = poll_shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            if events_tx.send(report).await.is_err() {
                break;
            }
        }
    });

    let (batches, readings) = buffer.backlog()?;
    stats.backlog.store(readings, Relaxed);
    if batches > 0 {
        tracing::info!(agent = %settings.agent, batches, readings, "backlog found in the buffer");
    }

    // One window per lane: events have slots of their own, so a telemetry backlog in flight can
    // never hold a trip event back; and they are always sent first.
    let mut windows =
        [(Lane::Events, Window::new(settings.in_flight)), (Lane::Telemetry, Window::new(settings.in_flight))];
    let mut connected = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for (lane, window) in &mut windows {
            if window.free() > 0 {
                window.load(buffer.next_after(*lane, window.cursor(), window.free())?);
            }
        }
        if connected {
            let now = Instant::now();
            'lanes: for (_, window) in &mut windows {
                for seq in window.due(now, settings.ack_timeout) {
                    let Some(send) = window.get(seq) else {
                        continue;
                    };
                    let resend = send.resend;
                    if client.try_publish(&telemetry_topic, QoS::AtLeastOnce, false, send.payload.to_vec()).is_err() {
                        break 'lanes; // client queue full: the next tick tries again
                    }
                    window.mark_sent(seq, now);
                    stats.batches_sent.fetch_add(1, Relaxed);
                    if resend {
                        stats.batches_resent.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(Uplink::Connected) => {
                    let in_flight: usize = windows.iter().map(|(_, w)| w.len()).sum();
                    tracing::info!(agent = %settings.agent, in_flight, "uplink connected");
                    connected = true;
                    stats.uplink_connected.store(true, Relaxed);
                    if client.try_subscribe(&ack_topic, QoS::AtLeastOnce).is_err() {
                        tracing::warn!(agent = %settings.agent, "cannot queue the ack subscription");
                    }
                    windows.iter_mut().for_each(|(_, w)| w.connection_reset());
                }
                Some(Uplink::Disconnected) => {
                    connected = false;
                    stats.uplink_connected.store(false, Relaxed);
                    windows.iter_mut().for_each(|(_, w)| w.connection_reset());
                }
                Some(Uplink::Ack(payload)) => on_ack(&settings.agent, &payload, &mut windows, &buffer, &stats)?,
                None => break,
            },
            _ = committed.changed() => {}
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = client.try_disconnect();
    poller.abort();
    buffer.flush().await
}

fn on_ack(
    agent: &str,
    payload: &[u8],
    windows: &mut [(Lane, Window); 2],
    buffer: &Buffer,
    stats: &AgentStats,
) -> Result<(), BufferError> {
    let ack: Ack = match from_wire(payload) {
        Ok(ack) => ack,
        Err(e) => {
            tracing::warn!(agent, error = %e, bytes = payload.len(), "ignoring a malformed ack");
            return Ok(());
        }
    };
    windows.iter_mut().for_each(|(_, w)| {
        w.ack(ack.seq);
    });
    let Some(readings) = buffer.remove(ack.seq)? else {
        return Ok(()); // a duplicate ack for a batch already gone
    };
    let readings = readings as u64;
    stats.backlog.fetch_sub(readings.min(stats.backlog.load(Relaxed)), Relaxed);
    match ack.status {
        AckStatus::Stored { .. } => {
            stats.acked.fetch_add(readings, Relaxed);
        }
        AckStatus::Rejected { reason } => {
            stats.rejected.fetch_add(readings, Relaxed);
            tracing::error!(agent, seq = ack.seq, readings, %reason, "collector refused a batch for good; dropped it");
        }
    }
    Ok(())
}
