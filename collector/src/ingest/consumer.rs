//! The telemetry consumer.
//!
//! For each message on `edgeloop/v1/+/telemetry`, in arrival order: decode and validate the
//! batch, check that its agent id is the topic's, write it to the store (retrying transient
//! failures with backoff), publish the agent's ack, and only then acknowledge the MQTT message.
//! A collector that dies anywhere before the ack leaves the batch with the agent, which sends it
//! again. While the store is down nothing is acknowledged, so the broker stops delivering once its
//! in-flight window is full and the backlog stays on the agents' disks.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use edgeloop_shared::{
    backoff::Backoff,
    batch::Batch,
    model::{Ack, AckStatus, CommandResult, Presence, from_wire},
    secret::Secret,
    topic::{self, Channel},
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::dedup::Dedup;
use crate::{
    fleet::Fleet,
    live::Live,
    mqtt::{self, Client, ConnectOptions, EventLoop, Incoming, Message},
    stats::CollectorStats,
    store::{Store, StoreError, Written},
};

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub client_id: String,
    pub version: crate::config::MqttVersion,
    /// Consume through `$share/<group>/...` (several collectors split the load).
    pub shared_group: Option<String>,
    pub max_in_flight: u16,
    pub dedup_window: usize,
    pub write: WriteBounds,
}

impl IngestSettings {
    /// The ingest's own connection. [`crate::start`] makes it, so that the automation's commander
    /// can publish on it too (the ingest drives its event loop).
    pub fn connection(&self) -> ConnectOptions {
        ConnectOptions {
            version: self.version,
            client_id: self.client_id.clone(),
            host: self.host.clone(),
            port: self.port,
            username: self.username.clone(),
            password: self.password.clone(),
            // A persistent session lets the broker queue batches while this collector restarts. Not
            // in a shared group: there a dead member's session would keep taking its share of the
            // batches into a queue nobody reads until it expires; with a clean session the broker
            // drops the member at once and the agents' re-sends go to the survivors.
            persistent: self.shared_group.is_none(),
            manual_acks: true,
            max_in_flight: self.max_in_flight,
            channel_capacity: 1024,
        }
    }
}

/// Where the ingest sends on what it has stored and what the agents reported: the recent window
/// the API shows, and the automation's inputs when it runs. Bounded: when the automation falls
/// behind, the ingest waits for it, and the agents keep their batches until it catches up
/// (backpressure, nothing skipped).
pub struct Outputs {
    pub live: Arc<Live>,
    /// Every batch once stored.
    pub stored: Option<mpsc::Sender<Arc<Batch>>>,
    /// The agents' command results.
    pub results: Option<mpsc::Sender<CommandResult>>,
}

/// What became of one message.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ack { agent: String, ack: Ack },
    Drop,
}

/// Runs the consumer on `connection` (made from [`IngestSettings::connection`]) until `shutdown`.
/// `consuming` turns true once the broker has confirmed the telemetry subscription (and false
/// while the connection is down).
#[allow(clippy::too_many_arguments)] // the stage's inputs, outputs and shared registries, named
pub async fn run(
    settings: IngestSettings,
    (client, mut eventloop): (Client, EventLoop),
    store: Arc<Store>,
    stats: Arc<CollectorStats>,
    fleet: Arc<Fleet>,
    consuming: watch::Sender<bool>,
    mut outputs: Outputs,
    shutdown: CancellationToken,
) {
    // Unbounded so that the poller never waits on the worker: a poller that waits stops answering
    // keep-alives and sending acks. What bounds it is the broker's in-flight window (it sends no
    // more un-acked messages than that per connection); backpressure is not acking.
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let gate = Arc::new(AckGate::default());
    let poll_gate = gate.clone();
    let poll_stats = stats.clone();
    let poll_client = client.clone();
    let poll_shutdown = shutdown.clone();
    let mut backoff = Backoff::seeded(settings.write.retry_min, settings.write.retry_max);
    let mut suback_count = 0u64;
    let status_filter = topic::all_agents(Channel::Status);
    let result_filter = topic::all_agents(Channel::Result);
    let filter = match &settings.shared_group {
        Some(group) => format!("$share/{group}/{}", topic::all_agents(Channel::Telemetry)),
        None => topic::all_agents(Channel::Telemetry),
    };
    // Collectors sharing the telemetry each store a part of it, but the automation must see all
    // of it: the collector that runs it also reads the whole stream, over a connection of its own
    // (a broker sends a client one copy of a message however many of its subscriptions match, so
    // the ingest's own connection cannot hold both). Those copies are only evaluated, never stored
    // or acknowledged; this collector's share is stored as usual.
    let whole_stream = settings.shared_group.is_some() && outputs.stored.is_some();
    // Consuming once every connection has its subscriptions: the ingest's, and the whole
    // stream's when there is one.
    let ready = Arc::new(Readiness::new(if whole_stream { 2 } else { 1 }, consuming));
    if whole_stream && let Some(automation) = outputs.stored.take() {
        let feed = whole_stream_feed(settings.clone(), automation, stats.clone(), ready.clone(), shutdown.clone());
        tokio::spawn(feed);
    }
    let poll_ready = ready.clone();
    let version = settings.version;
    let poller = tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = poll_shutdown.cancelled() => break,
            };
            match event {
                Ok(Incoming::ConnAck { session_present }) => {
                    backoff.reset();
                    suback_count = 0;
                    tracing::info!(session_present, version = ?version, "ingest connected to the broker");
                    if poll_client.try_subscribe(&filter, true).is_err() {
                        tracing::error!("cannot queue the telemetry subscription");
                    }

                    // Status is not shared: every collector keeps the whole fleet registry.
                    if poll_client.try_subscribe(&status_filter, true).is_err() {
                        tracing::error!("cannot queue the status subscription");
                    }
                    // Command results go to every collector too; the one that sent the command
                    // (its automation knows the id) audits it, the others ignore it.
                    if poll_client.try_subscribe(&result_filter, true).is_err() {
                        tracing::error!("cannot queue the command-result subscription");
                    }
                }
                Ok(Incoming::SubAck) => {
                    suback_count += 1;
                    // Consuming once the three subscriptions of this connection are confirmed.
                    if suback_count == 3 {
                        poll_ready.set(0, true);
                    }
                }
                Ok(Incoming::Publish(message)) => {
                    if tx.send(Delivery { connection: poll_gate.current(), message }).is_err() {
                        break;
                    }
                }
                Ok(Incoming::Other) => {}
                Err(e) => {
                    // Whatever this connection delivered and is not acked yet, the broker
                    // delivers again (persistent session) or the agents re-send (clean session).
                    poll_gate.next_connection(&mut eventloop);
                    poll_stats.broker_disconnects.fetch_add(1, Relaxed);
                    poll_ready.set(0, false);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "ingest lost the broker");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = poll_shutdown.cancelled() => break,
                    }
                }
            }
        }
    });

    let mut dedup = Dedup::new(settings.dedup_window);
    let bounds = settings.write.clone();
    // Writes in flight, oldest first. rumqttd takes acks only in delivery order, so however the
    // writes finish, their messages are answered front to back.
    let mut pipeline: VecDeque<InFlight> = VecDeque::new();
    'messages: loop {
        // The oldest write must finish before another may start when every slot is taken.
        if pipeline.len() >= bounds.concurrency.max(1) {
            let result = tokio::select! {
                result = front_finished(&mut pipeline) => result,
                _ = shutdown.cancelled() => break,
            };
            let Some(oldest) = pipeline.pop_front() else { break };
            if !settle(oldest, result, &client, &gate, &stats, &fleet, &mut dedup, &outputs, &shutdown).await {
                break 'messages;
            }
            note_unacked(&pipeline, &stats);
            continue;
        }
        let first = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => break },
            // Answer finished writes as soon as they finish, not when the next message comes.
            result = front_finished(&mut pipeline) => {
                let Some(oldest) = pipeline.pop_front() else { continue };
                if !settle(oldest, result, &client, &gate, &stats, &fleet, &mut dedup, &outputs, &shutdown).await {
                    break 'messages;
                }
                note_unacked(&pipeline, &stats);
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        // A message of a connection that is gone: the broker delivers it again on the current
        // one (or its agent re-sends it), and only that copy may be acked.
        if first.connection != gate.current() {
            stats.stale_messages.fetch_add(1, Relaxed);
            continue;
        }
        let started = std::time::Instant::now();
        // Messages from any agent share one database write, up to the size bounds, waiting at
        // most `linger` for company: fewer, larger requests when the database is the bottleneck.
        let mut group = vec![first];
        let mut points = points_of(&group[0].message);
        let linger = tokio::time::sleep(bounds.linger);
        tokio::pin!(linger);
        while group.len() < bounds.max_batches && points < bounds.max_points {
            let next = match rx.try_recv() {
                Ok(p) => p,
                Err(_) if bounds.linger.is_zero() => break,
                Err(_) => tokio::select! {
                    p = rx.recv() => match p { Some(p) => p, None => break },
                    _ = &mut linger => break,
                },
            };
            if next.connection != gate.current() {
                stats.stale_messages.fetch_add(1, Relaxed);
                continue;
            }
            points += points_of(&next.message);
            group.push(next);
        }
        let prepared: Vec<Prepared> =
            group.iter().map(|d| prepare(&d.message, &stats, &fleet, &mut dedup, &outputs)).collect();
        let task = tokio::spawn(write_group(
            prepared,
            store.clone(),
            stats.clone(),
            (bounds.retry_min, bounds.retry_max),
            shutdown.clone(),
        ));
        pipeline.push_back(InFlight { group, task, started });
        note_unacked(&pipeline, &stats);
        stats.queue_depth.store(rx.len() as u64, Relaxed);
    }
    // Shutting down: whatever is still being written stays un-acked; the agents re-send it.
    for w in pipeline {
        w.task.abort();
    }
    stats.set_unacked_since(HashMap::new());
    poller.abort();
}

/// A message and the broker connection it came on.
struct Delivery {
    connection: u64,
    message: Message,
}

/// Which broker connection is current. A broker ack is only ever sent on the connection its
/// message came on: rumqttd takes acks strictly in its delivery order and drops a client that
/// acks anything else, and after a reconnect it redelivers every un-acked message under new packet
/// ids, so an old message's ack on the new connection would be "out of order" (docs/architecture.md,
/// "Outages"). The check and the queueing of an ack happen under the lock, and so does the move to
/// the next connection with the dropping of acks still queued: no ack slips across.
#[derive(Default)]
struct AckGate {
    connection: std::sync::Mutex<u64>,
}

impl AckGate {
    fn current(&self) -> u64 {
        *self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection failed: later acks of its messages are not sent, queued ones are dropped.
    fn next_connection(&self, eventloop: &mut EventLoop) {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        *connection += 1;
        eventloop.drop_queued_acks();
    }

    /// Queues the broker ack of `d` when its connection is still the current one (`Ok(false)`:
    /// it is not, nothing is sent).
    fn ack(&self, client: &Client, d: &Delivery) -> Result<bool, String> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        if d.connection != *connection {
            return Ok(false);
        }
        client.try_ack(&d.message).map(|()| true)
    }
}

/// Publishes, per agent, when its oldest message still in the pipeline was taken.
fn note_unacked(pipeline: &VecDeque<InFlight>, stats: &CollectorStats) {
    let mut since: HashMap<String, std::time::Instant> = HashMap::new();
    for w in pipeline {
        for d in &w.group {
            if let Some((agent, Channel::Telemetry)) = topic::parse(d.message.topic()) {
                let t = since.entry(agent.to_owned()).or_insert(w.started);
                *t = (*t).min(w.started);
            }
        }
    }
    stats.set_unacked_since(since);
}

/// Which of the ingest's connections have their subscriptions; `consuming` is true when all do.
struct Readiness {
    parts: std::sync::Mutex<u8>,
    all: u8,
    consuming: watch::Sender<bool>,
}

impl Readiness {
    fn new(parts: u8, consuming: watch::Sender<bool>) -> Self {
        Self { parts: std::sync::Mutex::new(0), all: (1u8 << parts) - 1, consuming }
    }

    fn set(&self, part: u8, on: bool) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            *parts |= 1 << part;
        } else {
            *parts &= !(1 << part);
        }
        self.consuming.send_replace(*parts == self.all);
    }
}

/// The automation's view of the whole stream when collectors share the telemetry: a connection of
/// its own (clean session, QoS 0: a copy lost while it reconnects is only not evaluated), every
/// batch decoded and handed to the automation. Skipped copies are counted.
async fn whole_stream_feed(
    settings: IngestSettings,
    automation: mpsc::Sender<Arc<Batch>>,
    stats: Arc<CollectorStats>,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let (client, mut eventloop) = mqtt::connect(&ConnectOptions {
        version: settings.version,
        client_id: format!("{}-automation", settings.client_id),
        host: settings.host.clone(),
        port: settings.port,
        username: settings.username.clone(),
        password: settings.password.clone(),
        persistent: false,
        manual_acks: false,
        max_in_flight: settings.max_in_flight,
        channel_capacity: 64,
    });
    let filter = topic::all_agents(Channel::Telemetry);
    let mut backoff = Backoff::seeded(settings.write.retry_min, settings.write.retry_max);
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = shutdown.cancelled() => return,
        };
        match event {
            Ok(Incoming::ConnAck { .. }) => {
                backoff.reset();
                if client.try_subscribe(&filter, false).is_err() {
                    tracing::error!("cannot queue the automation's whole-stream subscription");
                }
            }
            Ok(Incoming::SubAck) => ready.set(1, true),
            Ok(Incoming::Publish(p)) => {
                let Some((agent, Channel::Telemetry)) = topic::parse(p.topic()) else { continue };
                match Batch::decode(p.payload()) {
                    Ok(batch) if batch.agent == agent => match automation.try_send(Arc::new(batch)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            stats.automation_skipped.fetch_add(1, Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    // The stored path counts and logs bad batches; here they are only left out.
                    _ => {
                        stats.automation_skipped.fetch_add(1, Relaxed);
                    }
                }
            }
            Ok(Incoming::Other) => {}
            Err(e) => {
                ready.set(1, false);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "the automation's whole-stream connection is down");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// One database write under way, with the messages it answers.
struct InFlight {
    group: Vec<Delivery>,
    task: tokio::task::JoinHandle<Option<Vec<Prepared>>>,
    started: std::time::Instant,
}

type WriteResult = Result<Option<Vec<Prepared>>, tokio::task::JoinError>;

/// The oldest write's result, once it has finished (never, while there is none). Cancel-safe:
/// a `JoinHandle` keeps its result until polled to completion.
async fn front_finished(pipeline: &mut VecDeque<InFlight>) -> WriteResult {
    match pipeline.front_mut() {
        Some(w) => (&mut w.task).await,
        None => std::future::pending().await,
    }
}

/// Takes a finished write: records what was stored, publishes the agents' acks and
/// acknowledges the messages to the broker, in order. `false` when shutdown interrupted it.
#[allow(clippy::too_many_arguments)] // the stage's state, named
async fn settle(
    w: InFlight,
    result: WriteResult,
    client: &Client,
    gate: &AckGate,
    stats: &CollectorStats,
    fleet: &Fleet,
    dedup: &mut Dedup,
    outputs: &Outputs,
    shutdown: &CancellationToken,
) -> bool {
    let settled = match result {
        Ok(Some(s)) => s,
        // Shutdown mid-retry, or the task was cancelled: leave the messages un-acked.
        Ok(None) | Err(_) => return false,
    };
    for (delivery, prepared) in w.group.iter().zip(settled) {
        let outcome = match prepared {
            Prepared::Done(o) => o,
            // Another copy (a redelivery, a re-send) was written alongside and settled first:
            // counted and passed on once.
            Prepared::Stored { agent, batch, .. } if dedup.seen(&agent, batch.buffer, batch.seq) => {
                stats.duplicates.fetch_add(1, Relaxed);
                let points = batch.point_count() as u32;
                Outcome::Ack { agent, ack: batch.ack(AckStatus::Stored { points }) }
            }
            Prepared::Stored { agent, batch, written } => {
                let outcome = stored(&agent, &batch, &written, stats, fleet, dedup);
                let batch = Arc::new(batch);
                outputs.live.on_batch(&batch);
                if let Some(automation) = &outputs.stored {
                    tokio::select! {
                        sent = automation.send(batch) => if sent.is_err() {
                            tracing::debug!("the automation has stopped");
                        },
                        _ = shutdown.cancelled() => return false,
                    }
                }
                outcome
            }
            // Not reached: the write task settles every batch or returns None.
            Prepared::Write { .. } => Outcome::Drop,
        };
        // The agent's ack goes out whichever connection the message came on: the batch is stored.
        // Never waiting on the client's queue: an ack not sent costs a re-send, answered by dedup.
        if let Outcome::Ack { agent, ack } = outcome {
            match ack.encode() {
                Ok(bytes) => {
                    if let Err(e) = client.try_publish(topic::topic(&agent, Channel::Ack), bytes) {
                        stats.acks_not_queued.fetch_add(1, Relaxed);
                        tracing::warn!(%agent, seq = ack.seq, error = %e, "cannot queue the ack; the agent will re-send");
                    }
                }
                Err(e) => tracing::error!(%agent, error = %e, "cannot encode an ack"),
            }
        }
        match gate.ack(client, delivery) {
            Ok(true) => {}
            Ok(false) => {
                stats.stale_messages.fetch_add(1, Relaxed);
            }
            // The broker will take the next ack as out of order and reconnect us; it then
            // delivers everything un-acked again.
            Err(e) => {
                stats.acks_not_queued.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "cannot acknowledge a message to the broker");
            }
        }
    }
    stats.processing.observe(w.started.elapsed().as_secs_f64());
    true
}

/// A cheap size estimate of a message before decoding it: wire batches take ~3 bytes per point.
fn points_of(p: &Message) -> usize {
    p.payload().len() / 3
}

/// How the ingest groups messages into database writes.
#[derive(Debug, Clone)]
pub struct WriteBounds {
    /// Database writes in flight at once.
    pub concurrency: usize,
    /// Most messages (batches) in one write.
    pub max_batches: usize,
    /// Roughly the most points in one write (estimated from message sizes before decoding).
    pub max_points: usize,
    /// How long the first message of a write waits for others to join it.
    pub linger: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// A message, decided: answered already, a batch to write, or a batch written.
enum Prepared {
    Done(Outcome),
    Write { agent: String, batch: Batch },
    Stored { agent: String, batch: Batch, written: Written },
}

/// Decodes and checks a message; status messages update the fleet registry.
fn prepare(publish: &Message, stats: &CollectorStats, fleet: &Fleet, dedup: &mut Dedup, outputs: &Outputs) -> Prepared {
    if let Some((agent, Channel::Result)) = topic::parse(publish.topic()) {
        match from_wire::<CommandResult>(publish.payload()) {
            Ok(r) if r.agent == agent => {
                if let Some(results) = &outputs.results
                    && results.try_send(r).is_err()
                {
                    tracing::warn!(agent, "command result dropped: the automation is not keeping up");
                }
            }
            Ok(r) => {
                stats.spoofed.fetch_add(1, Relaxed);
                tracing::warn!(topic_agent = agent, result_agent = %r.agent, "command result claims another agent; dropped");
            }
            Err(e) => {
                stats.malformed.fetch_add(1, Relaxed);
                tracing::warn!(agent, error = %e, "malformed command result dropped");
            }
        }
        return Prepared::Done(Outcome::Drop);
    }
    if let Some((agent, Channel::Status)) = topic::parse(publish.topic()) {
        match from_wire::<Presence>(publish.payload()) {
            Ok(p) => fleet.on_presence(agent, p),
            Err(e) => {
                stats.malformed.fetch_add(1, Relaxed);
                tracing::warn!(agent, error = %e, "malformed status message dropped");
            }
        }
        return Prepared::Done(Outcome::Drop);
    }
    stats.batches_received.fetch_add(1, Relaxed);
    let Some((agent, Channel::Telemetry)) = topic::parse(publish.topic()) else {
        stats.malformed.fetch_add(1, Relaxed);
        tracing::warn!(topic = %publish.topic(), "message on a topic that is not an agent's telemetry; dropped");
        return Prepared::Done(Outcome::Drop);
    };
    let batch = match Batch::decode(publish.payload()) {
        Ok(b) => b,
        Err(e) => {
            stats.malformed.fetch_add(1, Relaxed);
            tracing::warn!(agent, bytes = publish.payload().len(), error = %e, "malformed batch dropped");
            return Prepared::Done(Outcome::Drop);
        }
    };
    if batch.agent != agent {
        stats.spoofed.fetch_add(1, Relaxed);
        tracing::warn!(topic_agent = agent, batch_agent = %batch.agent, seq = batch.seq, "batch claims another agent's id; dropped");
        return Prepared::Done(Outcome::Drop);
    }
    if dedup.seen(agent, batch.buffer, batch.seq) {
        stats.duplicates.fetch_add(1, Relaxed);
        let points = batch.point_count() as u32;
        return Prepared::Done(Outcome::Ack { agent: agent.to_owned(), ack: batch.ack(AckStatus::Stored { points }) });
    }
    Prepared::Write { agent: agent.to_owned(), batch }
}

/// Writes every batch of the group, in one request when there are several (falling back to one
/// request per batch when the database refuses the combined one), retrying transient failures.
/// Returns the group settled (`Stored`, or `Done` with a rejection), `None` when shutdown
/// interrupted a retry.
async fn write_group(
    mut group: Vec<Prepared>,
    store: Arc<Store>,
    stats: Arc<CollectorStats>,
    (retry_min, retry_max): (Duration, Duration),
    shutdown: CancellationToken,
) -> Option<Vec<Prepared>> {
    let mut retry = Backoff::seeded(retry_min, retry_max);
    let batches: Vec<&Batch> =
        group.iter().filter_map(|p| if let Prepared::Write { batch, .. } = p { Some(batch) } else { None }).collect();
    let mut one_by_one = batches.len() <= 1;
    while !one_by_one {
        // A write in progress is abandoned at shutdown (its messages stay un-acked): a hung
        // database must not hold the collector past its grace period.
        let written = tokio::select! {
            w = store.write_all(&batches) => w,
            _ = shutdown.cancelled() => return None,
        };
        match written {
            Ok(true) => {
                stats.write_succeeded();
                for p in group.iter_mut() {
                    if let Prepared::Write { .. } = p
                        && let Prepared::Write { agent, batch } = std::mem::replace(p, Prepared::Done(Outcome::Drop))
                    {
                        *p = Prepared::Stored { agent, batch, written: Written::default() };
                    }
                }
                return Some(group);
            }
            // Refused as a whole, or a store without combined writes: one batch at a time,
            // so a bad point costs only its own line.
            Ok(false) => one_by_one = true,
            Err(StoreError::Rejected(_)) => {
                stats.write_succeeded();
                one_by_one = true;
            }
            Err(e) => {
                let delay = retry_delay(&e, &mut retry, &stats);
                tracing::warn!(batches = batches.len(), error = %e, retry_in = ?delay, "store write failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
    for p in group.iter_mut() {
        if let Prepared::Write { .. } = p
            && let Prepared::Write { agent, batch } = std::mem::replace(p, Prepared::Done(Outcome::Drop))
        {
            *p = write_one(agent, batch, &store, &stats, &mut retry, &shutdown).await?;
        }
    }
    Some(group)
}

/// The delay before retrying a failed write: the database's `Retry-After` when it sent one.
fn retry_delay(e: &StoreError, retry: &mut Backoff, stats: &CollectorStats) -> Duration {
    stats.write_failed(&match e {
        StoreError::Transient { failure, .. } => failure.label(),
        _ => "other".into(),
    });
    match e {
        StoreError::Transient { retry_after: Some(d), .. } => *d,
        _ => retry.next_delay(),
    }
}

/// Records a stored batch and makes its ack.
fn stored(
    agent: &str,
    batch: &Batch,
    written: &Written,
    stats: &CollectorStats,
    fleet: &Fleet,
    dedup: &mut Dedup,
) -> Outcome {
    dedup.record(agent, batch.buffer, batch.seq);
    let points = batch.point_count() as u32;
    let refused = written.rejected.iter().filter(|r| r.reading).count() as u32;
    for r in &written.rejected {
        tracing::error!(agent, sensor = %r.name, seq = batch.seq, reason = %r.reason, line = %r.line.chars().take(200).collect::<String>(), "database refused a point; the rest of the batch is stored");
    }
    stats.points_rejected.fetch_add(written.rejected.len() as u64, Relaxed);
    let kept = u64::from(points.saturating_sub(refused));
    stats.stored(agent, batch.seq, kept);
    let newest = batch.series.iter().filter_map(|s| s.points.last()).map(|p| p.ts_ns).max();
    if let Some(ts) = newest {
        stats.latency.observe((edgeloop_shared::clock::now_ns() - ts) as f64 / 1e9);
    }
    fleet.on_stored(agent, kept, newest);
    Outcome::Ack {
        agent: agent.to_owned(),
        ack: batch.ack(AckStatus::Stored { points: points.saturating_sub(refused) }),
    }
}

/// Writes one batch, retrying transient failures; `None` when shutdown interrupted a retry.
async fn write_one(
    agent: String,
    batch: Batch,
    store: &Store,
    stats: &CollectorStats,
    retry: &mut Backoff,
    shutdown: &CancellationToken,
) -> Option<Prepared> {
    loop {
        let result = tokio::select! {
            w = store.write(&batch) => w,
            _ = shutdown.cancelled() => return None,
        };
        match result {
            Ok(written) => {
                stats.write_succeeded();
                retry.reset();
                return Some(Prepared::Stored { agent, batch, written });
            }
            Err(StoreError::Rejected(reason)) => {
                stats.write_succeeded();
                stats.rejected.fetch_add(1, Relaxed);
                let points = batch.point_count();
                tracing::error!(agent, seq = batch.seq, points, %reason, "database refused a batch for good");
                return Some(Prepared::Done(Outcome::Ack { ack: batch.ack(AckStatus::Rejected { reason }), agent }));
            }
            Err(e) => {
                let delay = retry_delay(&e, retry, stats);
                tracing::warn!(agent, seq = batch.seq, error = %e, retry_in = ?delay, "store write failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(connection: u64, pkid: u16) -> Delivery {
        let mut p = rumqttc::Publish::new("edgeloop/v1/gw/telemetry", rumqttc::QoS::AtLeastOnce, vec![1u8]);
        p.pkid = pkid;
        Delivery { connection, message: Message::V4(p) }
    }

    /// A message's broker ack goes out only on the connection it came on: once the connection
    /// is lost, acks still queued are dropped and later acks of its messages are not sent.
    #[tokio::test]
    async fn acks_never_cross_to_a_new_connection() {
        let (client, mut eventloop) = mqtt::connect(&ConnectOptions {
            version: crate::config::MqttVersion::V311,
            client_id: "test".into(),
            host: "127.0.0.1".into(),
            port: 1,
            username: None,
            password: None,
            persistent: true,
            manual_acks: true,
            max_in_flight: 10,
            // One queued request fills the client's queue: a refused `try_ack` shows it is taken.
            channel_capacity: 1,
        });
        let gate = AckGate::default();
        assert_eq!(gate.ack(&client, &delivery(0, 1)), Ok(true));
        assert!(gate.ack(&client, &delivery(0, 2)).is_err(), "the queue holds the first ack");

        gate.next_connection(&mut eventloop);
        assert_eq!(gate.current(), 1);
        assert_eq!(gate.ack(&client, &delivery(0, 3)), Ok(false), "an old connection's message is not acked");
        // The first ack was dropped with the old connection: the queue has room again.
        assert_eq!(gate.ack(&client, &delivery(1, 1)), Ok(true));
    }
}
