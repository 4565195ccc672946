//! The MQTT transport of the forwarder (rumqttc, QoS 1, TCP_NODELAY).
//!
//! Two tasks: one polls rumqttc's event loop (network I/O and reconnects, with jittered backoff)
//! and reports what happened over a channel; the forwarder task owns the [`Window`] and publishes
//! with `try_publish`, so it never blocks on a full client queue and never deadlocks with the poll
//! task.
//!
//! The same connection carries signed commands: the poll task routes a publish on the agent's
//! `cmd` topic straight to the commands task (`try_send`, never waiting), and the forwarder
//! publishes the commands task's results on the `result` topic.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use edgeloop_shared::{
    backoff::Backoff,
    model::{Ack, AckStatus, AgentReport, Presence, to_wire},
    secret::Secret,
    topic::{Channel, topic},
};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, NetworkOptions, Packet, QoS, Transport};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::window::Window;
use crate::{
    buffer::{Buffer, BufferError, Lane},
    config::CatchUp,
    stats::AgentStats,
};

/// Where and how the forwarder sends.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub agent: String,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keep_alive: Duration,
    pub in_flight: usize,
    pub ack_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub tls: Option<TlsFiles>,
    pub catch_up: CatchUp,
}

/// Builds the agent's status report (see [`Presence`]).
pub type Reporter = Arc<dyn Fn() -> AgentReport + Send + Sync>;

/// How often the agent reports its status; the collector calls an agent gone after three
/// missed reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

fn publish_report(client: &AsyncClient, topic: &str, reporter: &Reporter) {
    match to_wire(&Presence::Online(reporter())) {
        Ok(bytes) => {
            if client.try_publish(topic, QoS::AtLeastOnce, true, bytes).is_err() {
                tracing::debug!("client queue full; the status report waits for the next tick");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode the status report"),
    }
}

/// PEM contents for the TLS transport, read at start so a bad file fails the start, not a
/// reconnect hours later.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").field("client_auth", &self.client.is_some()).finish_non_exhaustive()
    }
}

/// The commands task's side of the uplink.
pub struct CommandLink {
    /// Payloads received on `edgeloop/v1/{agent}/cmd`. When it is full a command is dropped
    /// (logged): the issuer sees no result and may send it again.
    pub inbox: mpsc::Sender<Vec<u8>>,
    /// `CommandResult` payloads to publish on `edgeloop/v1/{agent}/result`.
    pub results: mpsc::Receiver<Vec<u8>>,
}

/// Results waiting for the client queue or the connection; the oldest go first when full.
const PENDING_RESULTS: usize = 64;

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
    reporter: Reporter,
    commands: CommandLink,
    shutdown: CancellationToken,
) -> Result<(), BufferError> {
    let CommandLink { inbox: cmd_inbox, results: mut cmd_results } = commands;
    let cmd_topic = topic(&settings.agent, Channel::Cmd);
    let result_topic = topic(&settings.agent, Channel::Result);
    let mut pending_results: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut results_open = true;
    let telemetry_topic = topic(&settings.agent, Channel::Telemetry);
    let status_topic = topic(&settings.agent, Channel::Status);
    let ack_topic = topic(&settings.agent, Channel::Ack);

    let mut opts = MqttOptions::new(settings.agent.clone(), settings.host.clone(), settings.port);
    opts.set_keep_alive(settings.keep_alive.max(Duration::from_secs(1)))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 64 << 20);
    if let (Some(user), Some(pass)) = (&settings.username, &settings.password) {
        opts.set_credentials(user, pass.expose());
    }
    if let Ok(offline) = to_wire(&Presence::Offline) {
        opts.set_last_will(LastWill::new(&status_topic, offline, QoS::AtLeastOnce, true));
    }
    if let Some(tls) = &settings.tls {
        opts.set_transport(Transport::tls(tls.ca.clone(), tls.client.clone(), None));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);

    let (events_tx, mut events) = mpsc::channel::<Uplink>(256);
    // The poller outlives the forwarder's own shutdown by a moment, so the `Offline` status and
    // the DISCONNECT still go out.
    let poll_stop = CancellationToken::new();
    let poll_shutdown = poll_stop.clone();
    let agent = settings.agent.clone();
    let poll_ack_topic = ack_topic.clone();
    let poll_cmd_topic = cmd_topic.clone();
    let mut backoff = Backoff::seeded(settings.reconnect_min, settings.reconnect_max);
    let poller = tokio::spawn(async move {
        // Warn when the link goes down, not at every failed attempt to bring it back.
        let mut up = true;
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = poll_shutdown.cancelled() => break,
            };
            let report = match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    up = true;
                    Uplink::Connected
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == poll_ack_topic => Uplink::Ack(p.payload.to_vec()),
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == poll_cmd_topic => {
                    if let Err(e) = cmd_inbox.try_send(p.payload.to_vec()) {
                        tracing::warn!(agent = %agent, error = %e, "command queue full or closed; command dropped");
                    }
                    continue;
                }
                // Our own goodbye: the connection closing after it is no news.
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    up = false;
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    let delay = backoff.next_delay();
                    if std::mem::replace(&mut up, false) {
                        tracing::warn!(agent = %agent, error = %e, retry_in = ?delay, "uplink down; buffering until it is back");
                    } else {
                        tracing::debug!(agent = %agent, error = %e, retry_in = ?delay, "uplink still down");
                    }
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

    let totals = buffer.totals();
    stats.backlog.store(totals.held_readings, Relaxed);
    if totals.held_batches > 0 {
        tracing::info!(agent = %settings.agent, batches = totals.held_batches, readings = totals.held_readings, "backlog found in the buffer");
    }

    // Three windows, sent in this order: events (their own slots, so a telemetry backlog in
    // flight never holds a trip back), live telemetry (committed since the uplink last came up),
    // then the backlog. With `catch_up = "oldest_first"` everything is backlog.
    let mut windows = Windows::new(settings.in_flight);
    let mut windows_sent_before = SentBefore::new();
    let mut connected = false;
    let mut acks: Vec<Ack> = Vec::new();
    let mut last_report = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        windows.load(&buffer).await?;
        stats
            .catching_up
            .store(connected && !windows.backlog.is_empty() && settings.catch_up == CatchUp::LiveFirst, Relaxed);
        if connected {
            let now = Instant::now();
            'lanes: for window in windows.in_send_order() {
                for seq in window.due(now, settings.ack_timeout) {
                    if !buffer.contains(seq) {
                        window.ack(seq); // dropped for room while in flight: nothing to send
                        continue;
                    }
                    let Some(send) = window.get(seq) else {
                        continue;
                    };
                    let resend = send.resend || windows_sent_before.remove(&seq);
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
        while connected && let Some(result) = pending_results.front() {
            if client.try_publish(&result_topic, QoS::AtLeastOnce, false, result.clone()).is_err() {
                break; // client queue full: the next tick tries again
            }
            pending_results.pop_front();
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(Uplink::Connected) => {
                    publish_report(&client, &status_topic, &reporter);
                    tracing::info!(agent = %settings.agent, in_flight = windows.len(), backlog = buffer.totals().held_batches, "uplink connected");
                    connected = true;
                    stats.uplink_connected.store(true, Relaxed);
                    if client.try_subscribe(&ack_topic, QoS::AtLeastOnce).is_err() {
                        tracing::warn!(agent = %settings.agent, "cannot queue the ack subscription");
                    }
                    if client.try_subscribe(&cmd_topic, QoS::AtLeastOnce).is_err() {
                        tracing::warn!(agent = %settings.agent, "cannot queue the command subscription");
                    }
                    // Everything committed from here on is live; what is older is the backlog.
                    let live_from = match settings.catch_up {
                        CatchUp::LiveFirst => buffer.totals().next_seq,
                        CatchUp::OldestFirst => u64::MAX,
                    };
                    windows_sent_before = windows.reset(live_from);
                }
                Some(Uplink::Disconnected) => {
                    connected = false;
                    stats.uplink_connected.store(false, Relaxed);
                    windows.connection_reset();
                }
                Some(Uplink::Ack(payload)) => {
                    collect_ack(&settings.agent, &payload, &mut acks, &stats);
                    // Take every ack already queued, and remove them in one transaction.
                    while let Ok(Uplink::Ack(payload)) = events.try_recv() {
                        collect_ack(&settings.agent, &payload, &mut acks, &stats);
                    }
                    on_acks(&settings.agent, &mut acks, &mut windows, &buffer, &stats).await?;
                }
                None => break,
            },
            result = cmd_results.recv(), if results_open => match result {
                Some(result) => {
                    if pending_results.len() >= PENDING_RESULTS {
                        pending_results.pop_front();
                        tracing::warn!(agent = %settings.agent, "too many command results waiting; dropped the oldest");
                    }
                    pending_results.push_back(result);
                }
                None => results_open = false,
            },
            _ = committed.changed() => {}
            _ = tick.tick() => {
                if connected && last_report.elapsed() >= REPORT_EVERY {
                    publish_report(&client, &status_topic, &reporter);
                    last_report = Instant::now();
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    if let Ok(bytes) = to_wire(&Presence::Offline) {
        let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, bytes);
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(e) = events.recv().await {
            if matches!(e, Uplink::Disconnected) {
                break;
            }
        }
    })
    .await;
    poll_stop.cancel();
    poller.abort();
    buffer.flush().await
}

/// The forwarder's three windows.
struct Windows {
    events: Window,
    live: Window,
    backlog: Window,
    /// Telemetry from this sequence number on is live.
    live_from: u64,
}

/// Batches sent on an earlier connection and still unacknowledged when the windows were rebuilt:
/// sending one of them again counts as a re-send.
type SentBefore = std::collections::BTreeSet<u64>;

impl Windows {
    fn new(in_flight: usize) -> Self {
        Self {
            events: Window::new(in_flight),
            live: Window::new(in_flight),
            backlog: Window::new(in_flight),
            live_from: u64::MAX,
        }
    }

    fn in_send_order(&mut self) -> [&mut Window; 3] {
        [&mut self.events, &mut self.live, &mut self.backlog]
    }

    fn len(&self) -> usize {
        self.events.len() + self.live.len() + self.backlog.len()
    }

    /// Tops every window up from the buffer.
    async fn load(&mut self, buffer: &Buffer) -> Result<(), BufferError> {
        if self.events.free() > 0 {
            self.events.load(buffer.next_after(Lane::Events, self.events.cursor(), self.events.free()).await?);
        }
        if self.backlog.free() > 0 {
            let got = buffer
                .next_between(Lane::Telemetry, self.backlog.cursor(), self.live_from, self.backlog.free())
                .await?;
            self.backlog.load(got);
        }
        if self.live.free() > 0 && self.live_from < u64::MAX {
            let after = self.live.cursor().or(self.live_from.checked_sub(1));
            self.live.load(buffer.next_after(Lane::Telemetry, after, self.live.free()).await?);
        }
        Ok(())
    }

    /// The uplink came (back) up: start over from the buffer with a new live boundary; returns
    /// the batches that had been sent before.
    fn reset(&mut self, live_from: u64) -> SentBefore {
        let mut sent = SentBefore::new();
        for w in self.in_send_order() {
            sent.extend(w.sent());
            *w = Window::new(w.max());
        }
        self.live_from = live_from;
        sent
    }

    fn connection_reset(&mut self) {
        self.in_send_order().into_iter().for_each(Window::connection_reset);
    }
}

fn collect_ack(agent: &str, payload: &[u8], acks: &mut Vec<Ack>, stats: &AgentStats) {
    match Ack::decode(payload) {
        Ok(ack) => acks.push(ack),
        Err(e) => {
            stats.acks_ignored.fetch_add(1, Relaxed);
            tracing::warn!(agent, error = %e, bytes = payload.len(), "ignoring a malformed ack");
        }
    }
}

/// Removes the batches the acks answer. An ack counts only when it names this agent and the
/// buffer of a batch in a send window under its sequence number: anything else (a forgery, an
/// answer meant for an older buffer, a second answer to a re-send) is counted and left alone,
/// so nobody but the collector's answer to that very batch can make the agent drop it.
async fn on_acks(
    agent: &str,
    acks: &mut Vec<Ack>,
    windows: &mut Windows,
    buffer: &Buffer,
    stats: &AgentStats,
) -> Result<(), BufferError> {
    acks.retain(|ack| {
        let ours = ack.agent == agent
            && ack.buffer.is_some_and(|b| windows.in_send_order().iter().any(|w| w.holds(ack.seq, b)));
        if !ours {
            stats.acks_ignored.fetch_add(1, Relaxed);
            if ack.agent == agent {
                tracing::debug!(agent, seq = ack.seq, buffer = ?ack.buffer, "ack for a batch not in flight; ignored");
            } else {
                tracing::warn!(agent, ack_agent = %ack.agent, seq = ack.seq, "ack names another agent; ignored");
            }
        }
        ours
    });
    for ack in acks.iter() {
        windows.in_send_order().into_iter().for_each(|w| {
            w.ack(ack.seq);
        });
    }
    let removed = buffer.remove(acks.iter().map(|a| a.seq).collect()).await?;
    stats.backlog.store(buffer.totals().held_readings, Relaxed);
    for (ack, readings) in acks.drain(..).zip(removed) {
        let Some(readings) = readings else {
            continue; // a duplicate ack for a batch already gone
        };
        let readings = u64::from(readings);
        match ack.status {
            AckStatus::Stored { .. } => {
                stats.acked.fetch_add(readings, Relaxed);
            }
            AckStatus::Rejected { reason } => {
                stats.rejected.fetch_add(readings, Relaxed);
                tracing::error!(agent, seq = ack.seq, readings, %reason, "collector refused a batch for good; dropped it");
            }
        }
    }
    Ok(())
}
